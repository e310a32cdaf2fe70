"""External placement without vLLM: the rendezvous files, the client against a scripted host,
the sync-address rule, the host's argument checks, and the config keys."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Listener

import pytest

from megatron_tulu.config import engine_config, load_recipe, model_preset
from megatron_tulu.rollout import client as client_mod
from megatron_tulu.rollout import network
from megatron_tulu.rollout.checks import hf_tensor_shapes
from megatron_tulu.rollout.client import connect_engines, resolve_sync_host
from megatron_tulu.rollout.config import RolloutConfig
from megatron_tulu.rollout.engine import RolloutEngine
from megatron_tulu.rollout.host import HostArgs, check_args, pin_interfaces
from megatron_tulu.rollout.rendezvous import (
    PROTOCOL_VERSION,
    Announcement,
    EngineRendezvousError,
    announce_path,
    clear_engine_files,
    error_path,
    read_announcement,
    wait_for_engines,
    write_announcement,
)
from megatron_tulu.rollout.types import RolloutEngineDied

MODEL = model_preset("tiny")


def _info(engine: int = 0, **kw: object) -> Announcement:
    base = dict(protocol=PROTOCOL_VERSION, engine_index=engine, host="127.0.0.1", port=1,
                pid=4321, hostname="node7", vllm_tp=1, nnodes=1, authkey="ab" * 32)  # fmt: skip
    return Announcement(**{**base, **kw})  # type: ignore[arg-type]


def test_announcement_is_private_and_round_trips(tmp_path):
    path = write_announcement(tmp_path, _info(2, vllm_tp=4, nnodes=2))
    assert path == announce_path(tmp_path, 2) == tmp_path / "engine-2.json"
    assert os.stat(path).st_mode & 0o777 == 0o600  # it holds the authkey
    assert read_announcement(path) == _info(2, vllm_tp=4, nnodes=2)
    assert not list(tmp_path.glob(".*tmp"))  # written through a renamed temporary file


def test_wait_names_the_missing_engines_and_the_directory(tmp_path):
    write_announcement(tmp_path, _info(0))
    start = time.monotonic()
    with pytest.raises(EngineRendezvousError) as err:
        wait_for_engines(tmp_path, 3, vllm_tp=1, timeout_s=0.3, poll_s=0.05)
    assert time.monotonic() - start < 5
    assert "engine(s) [1, 2] of 3" in str(err.value) and repr(str(tmp_path)) in str(err.value)


def test_wait_raises_a_host_error_file_at_once(tmp_path):
    error_path(tmp_path, 1, node_rank=1).write_text("RuntimeError: NCCL timeout on node 1\n")
    start = time.monotonic()
    with pytest.raises(EngineRendezvousError, match="engine-1.node-1.error: RuntimeError: NCCL"):
        wait_for_engines(tmp_path, 2, vllm_tp=1, timeout_s=60, poll_s=0.05)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("info", "quoted"),
    [(_info(0, vllm_tp=2), "vllm_tp 2"), (_info(0, protocol=99), "protocol 99")],
)
def test_wait_refuses_an_engine_of_another_recipe_or_version(tmp_path, info, quoted):
    write_announcement(tmp_path, info)
    with pytest.raises(EngineRendezvousError, match=quoted):
        wait_for_engines(tmp_path, 1, vllm_tp=1, timeout_s=1)


def test_a_starting_host_clears_its_own_stale_files_only(tmp_path):
    write_announcement(tmp_path, _info(0))
    write_announcement(tmp_path, _info(1))
    error_path(tmp_path, 0).write_text("old")
    error_path(tmp_path, 0, 1).write_text("old node 1")
    clear_engine_files(tmp_path, 0, node_rank=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine-0.node-1.error", "engine-1.json"]


class _ScriptedHost:
    """A control endpoint that answers like rollout.host from a script, then hangs up."""

    def __init__(self, replies: list[tuple[str, object]]) -> None:
        self.key = os.urandom(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.key)
        self.requests: list[tuple[str, dict]] = []
        self.replies = replies
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.listener.accept() as conn:
            for reply in self.replies:
                self.requests.append(conn.recv())
                conn.send(reply)

    def announce(self, directory, **kw: object) -> None:
        port = self.listener.address[1]
        write_announcement(directory, _info(0, port=port, authkey=self.key.hex(), **kw))


def _cfg(tmp_path, **kw: object) -> RolloutConfig:
    return RolloutConfig(placement="external", rendezvous_dir=str(tmp_path), connect_timeout_s=5,
                         **kw)  # fmt: skip


def test_client_speaks_to_a_host_and_a_lost_host_is_a_dead_engine(tmp_path):
    shapes = hf_tensor_shapes(MODEL)
    hello = {"protocol": PROTOCOL_VERSION, "shapes": [[n, list(s)] for n, s in shapes.items()]}
    host = _ScriptedHost([("ok", hello), ("ok", [[]]), ("error", ("ValueError", "bad prompt 3"))])
    host.announce(tmp_path)
    (handle,) = connect_engines(_cfg(tmp_path), shapes)
    assert handle.generate([[1, 2]], [{"n": 1}]) == [[]]
    with pytest.raises(ValueError, match="rollout engine 0 .*node7.*: bad prompt 3"):
        handle.score([[1, 2, 3]], [1])
    with pytest.raises(RolloutEngineDied, match="closed its connection during reset_prefix_cache"):
        handle.reset_prefix_cache()  # the scripted host hung up
    with pytest.raises(RolloutEngineDied, match="generate refused"):
        handle.check_alive("generate")
    assert [op for op, _ in host.requests] == ["hello", "generate", "score"]


def test_client_refuses_a_host_serving_another_model(tmp_path):
    other = hf_tensor_shapes(dataclasses.replace(MODEL, num_layers=MODEL.num_layers + 1))
    host = _ScriptedHost([("ok", {"shapes": [[n, list(s)] for n, s in other.items()]})])
    host.announce(tmp_path)
    with pytest.raises(EngineRendezvousError, match="serves a different model"):
        connect_engines(_cfg(tmp_path), hf_tensor_shapes(MODEL))


def test_a_host_error_file_kills_the_engine_for_the_client(tmp_path):
    shapes = hf_tensor_shapes(MODEL)
    host = _ScriptedHost([("ok", {"shapes": [[n, list(s)] for n, s in shapes.items()]})])
    host.announce(tmp_path, nnodes=2)
    (handle,) = connect_engines(_cfg(tmp_path), shapes)
    error_path(tmp_path, 0, 1).write_text("worker on node 1 was OOM-killed")
    with pytest.raises(RolloutEngineDied, match="OOM-killed"):
        handle.check_alive("push_weights")


def test_interfaces_are_found_by_address():
    assert network.interface_of("127.0.0.1") == "lo"
    assert network.interface_of("192.0.2.1") is None  # TEST-NET-1: on no interface here
    assert pin_interfaces("127.0.0.1") == {}  # loopback: nothing to pin


class _Engine:
    def __init__(self, host: str) -> None:
        self.info = _info(0, host=host)


def test_sync_host_rule(monkeypatch):
    monkeypatch.delenv(client_mod.SYNC_HOST_ENV, raising=False)
    routed: list[str] = []
    monkeypatch.setattr(network, "route_source_address", lambda t: routed.append(t) or "10.9.9.9")
    cfg = RolloutConfig(placement="external", rendezvous_dir="/r")
    assert resolve_sync_host(cfg, [_Engine("127.0.0.1")]) == "127.0.0.1"  # all local
    assert resolve_sync_host(cfg, [_Engine("10.1.2.3")]) == "10.9.9.9" and routed == ["10.1.2.3"]
    explicit = dataclasses.replace(cfg, sync_host="10.7.7.7")
    assert resolve_sync_host(explicit, [_Engine("10.1.2.3")]) == "10.7.7.7"
    monkeypatch.setenv(client_mod.SYNC_HOST_ENV, "10.5.5.5")
    assert resolve_sync_host(explicit, [_Engine("10.1.2.3")]) == "10.5.5.5"


def test_placement_keys_and_the_default_rendezvous_dir():
    with pytest.raises(ValueError, match="'cluster'"):
        RolloutConfig(placement="cluster")
    RolloutConfig(placement="external", num_engines=2, multiprocess=False)  # one per host
    recipe = load_recipe(None, ["rollout.placement=external", "training.output_dir=/runs/x"])
    cfg = engine_config(recipe, None, on_gpu=False)
    assert (cfg.placement, cfg.rendezvous_dir) == ("external", "/runs/x/engines")
    with pytest.raises(ValueError, match="needs the policy's ModelConfig"):
        RolloutEngine(cfg)


@pytest.mark.parametrize(
    ("kw", "quoted"),
    [
        ({"engine_index": 2}, "--engine-index 2 is out of range"),
        ({"nnodes": 3}, "vllm_tp (4) must be a multiple of --nnodes (3)"),
        ({"nnodes": 2}, "needs --master-addr and --master-port"),
        ({"nnodes": 2, "node_rank": 2}, "--node-rank 2 must be in [0, --nnodes 2)"),
    ],
)
def test_host_argument_checks(kw, quoted):
    args = HostArgs(recipe=None, overrides=[], engine_index=0, rendezvous="/r")
    with pytest.raises(ValueError) as err:
        check_args(dataclasses.replace(args, **kw), num_engines=2, vllm_tp=4)
    assert quoted in str(err.value)


def test_host_writes_its_fatal_error_for_the_trainer(tmp_path):
    cmd = [sys.executable, "-m", "megatron_tulu.rollout.host", "--engine-index", "3",
           "--rendezvous", str(tmp_path), "--set", "rollout.num_engines=2"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    text = error_path(tmp_path, 3).read_text()
    assert "--engine-index 3 is out of range" in text and "rollout.num_engines = 2" in text
