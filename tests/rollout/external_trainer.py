"""Trainer rank 0 against external engine hosts, as its own process (run by the external-engine
tests, inside a network namespace for the two-"node" one).

    python tests/rollout/external_trainer.py RECIPE HF_DIR OUT_JSON PROMPTS_JSON NEW_TOKENS \
        [FIRST_HF_DIR]

A one-rank megatron policy is built from ``HF_DIR``; ``start_rollout_engine`` (the RLVR stage's
own start-up) connects to the hosts announced in the recipe's ``rollout.rendezvous_dir``; the
script records greedy tokens with the hosts' dummy weights, pushes the policy with
``push_policy_weights`` (the stage's push), records greedy tokens and log-probs again, and
closes the engines (the hosts exit). With ``FIRST_HF_DIR``, that directory is pushed first (a
broadcast of whole tensors; greedy tokens recorded) and the policy is then pushed resharded
(``rollout.resharded_push``: each engine TP rank gets only its slices). Results go to
``OUT_JSON``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(
    recipe_path: str,
    hf_dir: str,
    out_json: str,
    prompts_json: str,
    new_tokens: int,
    first_hf_dir: str | None = None,
) -> None:
    from megatron_tulu.config import ParallelConfig, load_recipe
    from megatron_tulu.models.hf_io import load_hf_weights
    from megatron_tulu.models.llama import build_model_chunks
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.rollout.client import resolve_sync_host
    from megatron_tulu.rollout.policy_sync import iter_hf_dir, push_policy_weights
    from megatron_tulu.stages.rlvr.engine_start import start_rollout_engine

    recipe = load_recipe(recipe_path)
    prompts = json.loads(prompts_json)
    dims = ParallelConfig(tp=1, pp=1, micro_batch_size=1, global_batch_size=1).resolve(
        1, recipe.model
    )
    init_parallel(dims, seed=1)
    chunks = build_model_chunks(recipe.model, dims)
    load_hf_weights(chunks, hf_dir, model=recipe.model, tp=1, tp_rank=0)
    out: dict[str, object] = {}
    start = time.perf_counter()
    engine = start_rollout_engine(recipe)
    out["connect_s"] = time.perf_counter() - start
    assert engine is not None

    def greedy() -> list[tuple[list[int], list[float]]]:
        got = engine.generate(prompts, n=1, temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
        return [(s[0].token_ids, s[0].logprobs) for s in got]

    out["dummy"] = greedy()
    if first_hf_dir is not None:
        first = engine.push_weights(iter_hf_dir(first_hf_dir))
        out["first_push"] = {"bytes": first.bytes, "seconds": first.seconds}
        out["first"] = greedy()
        engine.config.resharded_push = True
    stats = push_policy_weights(chunks, model=recipe.model, engine=engine)
    assert stats is not None
    out["push"] = {"tensors": stats.tensors, "bytes": stats.bytes, "seconds": stats.seconds}
    out["sync_host"] = resolve_sync_host(engine.config, engine.engines)
    out["pushed"] = greedy()
    out["engine_pids"] = engine.engine_pids()
    out["engine_hosts"] = [e.info.host for e in engine.engines]
    engine.close()
    destroy_parallel()
    with open(out_json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:5], int(sys.argv[5]), *sys.argv[6:7])
    sys.stdout.flush()
    os._exit(0)
