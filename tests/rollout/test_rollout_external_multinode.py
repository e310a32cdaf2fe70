"""One vLLM engine spanning two "nodes", the trainer on a third, on one machine.

Each node is a network namespace with its own non-loopback address on a private bridge
(``netns.py``; needs root, skipped otherwise). Node 0 (10.213.0.1) runs the engine host's head
(engine core + TP rank 0), node 1 (10.213.0.2) the same engine's TP rank 1 headless (vLLM's
multi-node multiprocess executor), both started as the launcher starts them
(``python -m megatron_tulu.rollout.host ... --nnodes 2 --node-rank K --master-addr ...``) with
dummy weights. The trainer (10.213.0.3) connects through the rendezvous directory, pushes a
one-rank megatron policy into both workers over the gloo weight group, whose rendezvous address
it resolves itself (its own 10.213.0.3, never loopback), and checks greedy decoding against
transformers. When it closes the engine, both hosts exit.
"""

from __future__ import annotations

import json
import os
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
from netns import Nodes, unavailable_reason

from megatron_tulu.config import load_recipe
from megatron_tulu.models.synthetic import make_random_hf_dir

_REASON = unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=str(_REASON)),
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="vLLM TP2 on CPU binds one core each"),
]
MASTER_PORT = "29650"


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    rendezvous = tmp / "engines"
    recipe = write_recipe(tmp / "recipe.yaml", rendezvous=rendezvous, vllm_tp=2, multiprocess=False)
    model = load_recipe(str(recipe)).model
    hf_dir = make_random_hf_dir(tmp / "policy", model, seed=1)
    first_dir = make_random_hf_dir(tmp / "first", model, seed=2)
    out_json = tmp / "trainer.json"
    hosts: list[subprocess.Popen] = []
    with Nodes(3) as nodes:
        flags = ["--nnodes", "2", "--master-addr", nodes.address(0), "--master-port", MASTER_PORT]
        for node in (0, 1):
            cmd = host_command(recipe, rendezvous, *flags, "--node-rank", str(node))
            with open(tmp / f"host{node}.log", "w") as log:
                hosts.append(subprocess.Popen(
                    nodes.command(node, cmd), stdout=log, stderr=subprocess.STDOUT,
                    env=child_env(VLLM_CPU_OMP_THREADS_BIND=str(node)), start_new_session=True,
                ))  # fmt: skip
        try:
            trainer = subprocess.run(
                nodes.command(2, trainer_command(recipe, hf_dir, out_json, first_dir)),
                env=child_env(),
                capture_output=True, text=True, timeout=420,
            )  # fmt: skip
            codes = [wait_exit(h, 60) for h in hosts]
        finally:
            for host in hosts:
                if host.poll() is None:
                    host.kill()
    texts = [(tmp / f"host{n}.log").read_text() for n in (0, 1)]
    logs = "\n".join(t[-2500:] for t in texts)
    head_lines = [
        next((ln for ln in t.splitlines() if ln.startswith("engine 0 node")), "") for t in texts
    ]
    assert trainer.returncode == 0, f"trainer failed:\n{trainer.stderr[-4000:]}\nhosts:\n{logs}"
    return {
        "out": json.loads(out_json.read_text()),
        "hf_dir": hf_dir,
        "first_dir": first_dir,
        "codes": codes,
        "model": model,
        "logs": logs,
        "head_lines": head_lines,
        "addresses": [nodes.address(n) for n in range(3)],
    }


def test_engine_across_two_nodes_generates_the_pushed_policy(two_nodes):
    out, model = two_nodes["out"], two_nodes["model"]
    # TP2 across the two nodes: wrong or missing weights on either worker change the tokens.
    # First push: whole tensors broadcast (an HF dir); second: the megatron policy resharded.
    assert hf_greedy_mismatch(two_nodes["first_dir"], out["first"]) is None
    assert out["push"]["tensors"] == 3 + 9 * model.num_layers
    assert hf_greedy_mismatch(two_nodes["hf_dir"], out["pushed"]) is None
    tokens = [[t for t, _ in out[k]] for k in ("dummy", "first", "pushed")]
    assert tokens[0] != tokens[1] != tokens[2]
    print(f"connect {out['connect_s']:.1f} s, broadcast {out['first_push']}, "
          f"resharded {out['push']}")  # fmt: skip


def test_resharded_push_sends_each_worker_only_its_slices(two_nodes):
    out = two_nodes["out"]
    # broadcast: every tensor once (to both workers); resharded: each worker's slices, i.e.
    # the sharded tensors once in total plus the replicated norms twice (vocab padding adds
    # nothing here: 1000 rows split 512 + 488)
    norms = (2 * two_nodes["model"].num_layers + 1) * two_nodes["model"].hidden_size * 4
    assert out["push"]["bytes"] == out["first_push"]["bytes"] + norms


def test_sync_address_is_the_trainers_routable_one_and_hosts_exit(two_nodes):
    assert two_nodes["out"]["engine_hosts"] == [two_nodes["addresses"][0]]  # as announced
    assert two_nodes["out"]["sync_host"] == two_nodes["addresses"][2]
    assert two_nodes["codes"] == [0, 0], two_nodes["logs"]
    for node in (0, 1):  # each host pinned gloo/NCCL to its namespace's veth, not loopback
        assert (
            f"address {two_nodes['addresses'][node]}, set {{'GLOO_SOCKET_IFNAME'"
            in (two_nodes["head_lines"][node])
        )
