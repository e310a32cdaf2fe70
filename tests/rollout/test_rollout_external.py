"""External engine placement on one machine: an engine host started as its own process tree
(``python -m megatron_tulu.rollout.host``, dummy weights, as the launcher starts it) and the
trainer as another process (``external_trainer.py``: the RLVR stage's start-up and push).

Checks: the host announces itself and the trainer connects through the rendezvous directory;
the first push (a one-rank megatron policy built from a random HF dir) replaces the dummy
weights, after which vLLM's greedy tokens are transformers' greedy decoding of that HF dir with
matching log-probs; the host exits cleanly when the trainer closes the engine.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from external_helpers import (
    child_env,
    hf_greedy_mismatch,
    host_command,
    trainer_command,
    wait_exit,
    write_recipe,
)

from megatron_tulu.config import load_recipe
from megatron_tulu.models.synthetic import make_random_hf_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("external")
    rendezvous = tmp / "engines"
    recipe = write_recipe(tmp / "recipe.yaml", rendezvous=rendezvous, vllm_tp=1, multiprocess=False)
    model = load_recipe(str(recipe)).model
    hf_dir = make_random_hf_dir(tmp / "policy", model, seed=1)
    out_json = tmp / "trainer.json"
    with open(tmp / "host.log", "w") as log:
        host = subprocess.Popen(
            host_command(recipe, rendezvous), env=child_env(), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        trainer = subprocess.run(
            trainer_command(recipe, hf_dir, out_json), env=child_env(), capture_output=True,
            text=True, timeout=420,
        )  # fmt: skip
        host_code = wait_exit(host, 60)
    finally:
        if host.poll() is None:
            host.kill()
    host_log = (tmp / "host.log").read_text()
    assert trainer.returncode == 0, (
        f"trainer failed:\n{trainer.stderr[-4000:]}\nhost:\n{host_log[-3000:]}"
    )
    return {
        "out": json.loads(out_json.read_text()),
        "hf_dir": hf_dir,
        "host_pid": host.pid,
        "host_code": host_code,
        "rendezvous": rendezvous,
        "model": model,
    }


def test_push_fills_dummy_weights_and_greedy_matches_transformers(one_node):
    out, model = one_node["out"], one_node["model"]
    assert out["push"]["tensors"] == 3 + 9 * model.num_layers  # every HF tensor was pushed
    assert hf_greedy_mismatch(one_node["hf_dir"], out["pushed"]) is None
    # the host started from dummy (random) weights: before the push it generated other tokens
    assert [t for t, _ in out["dummy"]] != [t for t, _ in out["pushed"]]
    print(f"connect {out['connect_s']:.1f} s, push {out['push']}")


def test_host_is_its_own_process_and_exits_when_the_trainer_closes(one_node):
    out = one_node["out"]
    assert out["engine_pids"] == [
        one_node["host_pid"]
    ]  # the engine ran in the host, not the trainer
    assert out["sync_host"] == "127.0.0.1"  # everything on this machine's loopback
    assert one_node["host_code"] == 0
    assert not (one_node["rendezvous"] / "engine-0.json").exists()  # withdrawn on exit
