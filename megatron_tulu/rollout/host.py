"""An engine host: one vLLM rollout engine as its own process(es), started by the launcher.

    python -m megatron_tulu.rollout.host --recipe RECIPE.yaml [--set section.key=value ...] \\
        --engine-index E --rendezvous DIR \\
        [--nnodes N --node-rank K --master-addr ADDR --master-port PORT] [--host-ip IP]

One process per (engine, node); the launcher sets ``CUDA_VISIBLE_DEVICES`` to the engine's GPUs
on that node first. The engine is the recipe's (``config.rollout.engine_config``: dtype,
``vllm_tp``, context = prompt + response tokens, seed), started with dummy weights
(``load_format="dummy"``) from a ``config.json`` written from the recipe's model section: the
trainer's first push fills the weights, so nothing is exported or copied to start it. The
engine takes token ids and returns token ids (no tokenizer is loaded).

- Node rank 0 (the head) runs the engine core and its local workers, listens for the trainer's
  client (:mod:`megatron_tulu.rollout.client`) and, once ready, announces itself in
  ``DIR/engine-E.json`` (:mod:`megatron_tulu.rollout.rendezvous`).
- Node ranks 1..N-1 run the engine's other workers headless (vLLM's multi-node multiprocess
  executor: ``nnodes``/``node_rank``/``master_addr``/``master_port``; ``vllm_tp / N`` workers
  per node) and exit when those workers exit.

A host exits when the client says so (``shutdown``), on SIGTERM/SIGINT (the launcher), or on a
fatal error, which it writes to ``DIR/engine-E.error`` (``engine-E.node-K.error`` on node K).
``--host-ip`` (default: ``$VLLM_HOST_IP``, else ``--master-addr`` resolved on the head, else
this node's address on the route to the master, else the hostname's address) is the address
other nodes and the trainer reach this node at.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from megatron_tulu.rollout.rendezvous import (
    PROTOCOL_VERSION,
    Announcement,
    clear_engine_files,
    error_path,
    write_announcement,
    write_private_atomic,
)
from megatron_tulu.rollout.types import RolloutEngineDied

_POLL_S = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostArgs:
    recipe: str | None
    overrides: list[str]
    engine_index: int
    rendezvous: str
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    host_ip: str | None = None


def parse_args(argv: list[str] | None = None) -> HostArgs:
    p = argparse.ArgumentParser(
        prog="megatron_tulu.rollout.host", description=__doc__.split("\n")[0]
    )
    p.add_argument("--recipe", help="the run's YAML recipe (default: the built-in tiny one)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="recipe override, as the trainer's section.key=value (repeatable)",
    )
    p.add_argument("--engine-index", type=int, required=True)
    p.add_argument("--rendezvous", required=True, help="directory shared with trainer rank 0")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", help="node rank 0's address (nnodes > 1)")
    p.add_argument("--master-port", type=int, help="a free port on node rank 0 (nnodes > 1)")
    p.add_argument("--host-ip", help="this node's address as the others reach it")
    a = p.parse_args(argv)  # fmt: skip
    return HostArgs(
        recipe=a.recipe, overrides=list(a.set), engine_index=a.engine_index,
        rendezvous=a.rendezvous, nnodes=a.nnodes, node_rank=a.node_rank,
        master_addr=a.master_addr, master_port=a.master_port, host_ip=a.host_ip,
    )  # fmt: skip


def check_args(args: HostArgs, *, num_engines: int, vllm_tp: int) -> None:
    """ValueErrors quoting the offending flag."""
    if not 0 <= args.engine_index < num_engines:
        raise ValueError(
            f"--engine-index {args.engine_index} is out of range: the recipe has "
            f"rollout.num_engines = {num_engines} (indices 0..{num_engines - 1})"
        )
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise ValueError(f"--node-rank {args.node_rank} must be in [0, --nnodes {args.nnodes})")
    if vllm_tp % args.nnodes:
        raise ValueError(
            f"rollout.vllm_tp ({vllm_tp}) must be a multiple of --nnodes ({args.nnodes}): "
            "every node runs vllm_tp / nnodes workers of the engine"
        )
    if args.nnodes > 1 and (args.master_addr is None or args.master_port is None):
        raise ValueError(
            f"--nnodes {args.nnodes} needs --master-addr and --master-port (node rank 0's "
            f"address and a free port there); got {args.master_addr!r}, {args.master_port!r}"
        )


def advertised_address(args: HostArgs) -> str:
    """The address of this node that the trainer and the engine's other nodes can reach."""
    if args.host_ip:
        return args.host_ip
    if os.environ.get("VLLM_HOST_IP"):
        return os.environ["VLLM_HOST_IP"]
    if args.nnodes > 1 and args.master_addr:
        master = socket.gethostbyname(args.master_addr)
        if args.node_rank == 0:
            return master
        from megatron_tulu.rollout.network import route_source_address

        return route_source_address(master)
    return socket.gethostbyname(socket.gethostname())


def pin_interfaces(address: str) -> dict[str, str]:
    """Points gloo and NCCL at the interface that holds ``address`` (unless the environment
    already chose): by default both pick the hostname's address, which is often a loopback
    one (then other nodes are told to connect to 127.0.0.1). Inherited by vLLM's workers:
    their TP groups (gloo on CPU; NCCL + a gloo CPU group on GPU) and the weight-sync group.
    Returns what was set."""
    from megatron_tulu.rollout.network import interface_of, is_loopback

    if is_loopback(address):
        return {}
    name = interface_of(address)
    if name is None:
        return {}
    chosen = {}
    for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if not os.environ.get(key):
            os.environ[key] = chosen[key] = name
    return chosen


def write_model_dir(model: Any, *, dtype: str, out_dir: str | Path) -> str:
    """config.json of the recipe's model: all a dummy-weight engine reads from disk."""
    from megatron_tulu.models.hf_io import hf_config_dict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config_dict(model, dtype=dtype), indent=2))
    return str(out)


def _engine_config(args: HostArgs, model_dir: str) -> tuple[Any, Any]:
    import torch

    from megatron_tulu.config import engine_config, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    ro = recipe.rollout
    check_args(args, num_engines=ro.num_engines, vllm_tp=ro.vllm_tp)
    ro.check_model(recipe.model)
    cfg = engine_config(recipe, model_dir, on_gpu=torch.cuda.is_available())
    # this host runs one engine of the run, in its own process tree: a local one to vLLM.
    # rollout.multiprocess=false runs the engine core inside the host (faster start; the
    # host's death is then the engine's, which the client sees as a closed connection).
    cfg = dataclasses.replace(cfg, placement="local", num_engines=1)
    return recipe, cfg


class _Server:
    """Serves one client connection at a time with the engine; ``stop`` is set by the
    client's ``shutdown``."""

    def __init__(self, engine: Any, listener: Listener) -> None:
        self.engine, self.listener = engine, listener
        self.stop = threading.Event()
        self.fatal: str | None = None

    def _dispatch(self, op: str, kw: dict[str, Any]) -> Any:
        eng = self.engine
        if op == "hello":
            shapes = [[n, list(s)] for n, s in eng.expected_shapes.items()]
            return {"protocol": PROTOCOL_VERSION, "shapes": shapes, "pid": os.getpid()}
        if op == "generate":
            return eng.on_engine(0, op, lambda h: h.generate(kw["prompts"], kw["params"]))
        if op == "score":
            return eng.on_engine(0, op, lambda h: h.score(kw["sequences"], kw["prompt_lens"]))
        if op == "collective_rpc":
            method = kw["method"]
            if not method.startswith("mt_"):
                raise ValueError(f"collective_rpc {method!r} refused: only mt_* methods")
            return eng.on_engine(0, method, lambda h: h.collective_rpc(method, kw["kwargs"]))
        if op == "reset_prefix_cache":
            return eng.on_engine(0, op, lambda h: h.reset_prefix_cache())
        if op == "shutdown":
            self.stop.set()
            return True
        raise ValueError(f"unknown request {op!r}")

    def _serve(self, conn: Connection) -> None:
        while not self.stop.is_set():
            try:
                op, kw = conn.recv()
            except (EOFError, OSError):
                return  # the client went away: wait for the next one
            try:
                reply: tuple[str, Any] = ("ok", self._dispatch(op, kw))
            except RolloutEngineDied as exc:
                self.fatal = str(exc)
                reply = ("error", ("RolloutEngineDied", str(exc)))
            except Exception as exc:
                reply = ("error", (type(exc).__name__, str(exc)))
            with contextlib.suppress(EOFError, OSError):
                conn.send(reply)
            if self.fatal is not None:
                self.stop.set()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.listener.accept()
            except (OSError, EOFError, AuthenticationError):  # closed, or a failed handshake
                if self.stop.is_set():
                    return
                continue
            with conn:
                self._serve(conn)


def run_head(args: HostArgs, cfg: Any, recipe: Any, address: str) -> int:
    from megatron_tulu.rollout.engine import RolloutEngine
    from megatron_tulu.rollout.engine_proc import MultiNode, in_thread

    multinode = None
    if args.nnodes > 1:
        assert args.master_addr is not None and args.master_port is not None
        multinode = MultiNode(nnodes=args.nnodes, node_rank=0, master_addr=args.master_addr,
                              master_port=args.master_port)  # fmt: skip
    start = time.perf_counter()
    engine = RolloutEngine(cfg, model=recipe.model, load_format="dummy", multinode=multinode)
    engine.start()
    try:
        key = secrets.token_bytes(32)
        listener = Listener(("0.0.0.0", 0), authkey=key)
        server = _Server(engine, listener)
        thread = in_thread(server.run, "engine-host-server")
        write_announcement(args.rendezvous, Announcement(
            protocol=PROTOCOL_VERSION, engine_index=args.engine_index, host=address,
            port=listener.address[1], pid=os.getpid(), hostname=socket.gethostname(),
            vllm_tp=cfg.vllm_tp, nnodes=args.nnodes, authkey=key.hex(),
            start_seconds=round(time.perf_counter() - start, 3),
        ))  # fmt: skip
        print(f"engine {args.engine_index} ready at {address}:{listener.address[1]}", flush=True)
        while not server.stop.is_set() and not thread.done():
            server.stop.wait(_POLL_S)
            with contextlib.suppress(RolloutEngineDied):
                engine.check_alive()
                continue
            server.fatal = server.fatal or engine.engines[0].dead_reason
            break
        if server.fatal is not None:
            raise RolloutEngineDied(server.fatal)
    finally:
        with contextlib.suppress(Exception):
            Path(args.rendezvous, f"engine-{args.engine_index}.json").unlink(missing_ok=True)
        engine.close()
    return 0


def run_headless(args: HostArgs, cfg: Any) -> int:
    """Node rank K > 0: this node's workers of the engine (vLLM's headless executor)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    from megatron_tulu.rollout.engine_proc import MultiNode, engine_kwargs, in_thread

    assert args.master_addr is not None and args.master_port is not None
    multinode = MultiNode(nnodes=args.nnodes, node_rank=args.node_rank,
                          master_addr=args.master_addr, master_port=args.master_port)  # fmt: skip
    kwargs = engine_kwargs(cfg, load_format="dummy", multinode=multinode)
    vllm_config = EngineArgs(**kwargs).create_engine_config(headless=True)
    executor = MultiprocExecutor(vllm_config, monitor_workers=False)
    print(f"engine {args.engine_index} node {args.node_rank}: workers ready", flush=True)
    done = in_thread(lambda: executor.start_worker_monitor(inline=True), "headless-monitor")
    try:
        head_gone = _wait_for_head_or_workers(args, done)
    finally:
        with contextlib.suppress(Exception):
            executor.shutdown()
    codes = [h.proc.exitcode for h in executor.workers]
    if not head_gone and any(code not in (0, None) for code in codes):
        raise RuntimeError(f"engine workers on node {args.node_rank} exited with codes {codes}")
    return 0


def _wait_for_head_or_workers(args: HostArgs, workers_done: Any) -> bool:
    """Blocks until this node's workers exit (False) or the head is gone (True): its
    announcement withdrawn after it had appeared, or its error file written. vLLM's remote
    workers are not told when the head shuts down (they wait on its message queue), so the
    rendezvous directory says it. Called once the workers are ready, i.e. after the head
    started and cleared its files of any earlier run. A head killed by SIGKILL leaves its
    announcement behind: the launcher ends the job step then."""
    import concurrent.futures as cf

    from megatron_tulu.rollout.rendezvous import announce_path

    announced = False
    path = announce_path(args.rendezvous, args.engine_index)
    while True:
        try:
            workers_done.result(timeout=_POLL_S * 2)
            return False
        except cf.TimeoutError:
            pass
        if error_path(args.rendezvous, args.engine_index, 0).exists():
            return True
        if path.exists():
            announced = True
        elif announced:
            return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(0)  # a requested stop (the launcher ends the job), not a failure

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    clear_engine_files(args.rendezvous, args.engine_index, args.node_rank)
    code = 1
    try:
        address = advertised_address(args)
        pinned = pin_interfaces(address)
        print(f"engine {args.engine_index} node {args.node_rank}: address {address}, "
              f"set {pinned or 'no interface variables'}", flush=True)  # fmt: skip
        if args.nnodes > 1:
            os.environ["VLLM_HOST_IP"] = address  # vLLM's message queues bind/connect here
        model_dir = tempfile.mkdtemp(prefix=f"mt-engine-{args.engine_index}-")
        recipe, cfg = _engine_config(args, model_dir)
        write_model_dir(recipe.model, dtype=cfg.dtype, out_dir=model_dir)
        if args.node_rank == 0:
            code = run_head(args, cfg, recipe, address)
        else:
            code = run_headless(args, cfg)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        text = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        with contextlib.suppress(Exception):
            write_private_atomic(error_path(args.rendezvous, args.engine_index, args.node_rank),
                                 text + "\n")  # fmt: skip
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # vLLM's non-daemon threads/finalizers must not keep a finished host alive


if __name__ == "__main__":
    main()
