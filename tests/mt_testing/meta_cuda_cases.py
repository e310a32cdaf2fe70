"""Rank worker: the CUDA paths the GPU check runs, on the meta-device CUDA stand-in
(:mod:`mt_testing.meta_cuda`). Each case returns None when it ran through, else its traceback.

The cases follow ``scripts/gpu_check.sh``: the HF logits check, the step benchmark's SFT
(fp32, bf16, the fused output layer, full recompute), DPO and PPO steps, the DPO reference
pass, RLVR's learning phase (PPO with its value helper; GRPO with the reference offloaded
to host memory), and the SFT and DPO stages through the CLI, which save a checkpoint and resume
from it. At world size 2 (:data:`LAYOUT_CASES`) the same paths run as TP2 and PP2 layouts, plus
the weight push's stream. The resume reads the saved bytes into the meta tensors, which keep
none of them: it checks where things go, not what they hold (the GPU check covers that).
"""

from __future__ import annotations

import importlib.util
import os
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny"
ROWS = 4


def _bench_worker() -> Callable[[dict], dict]:
    path = ROOT / "tools" / "benchmark_step.py"
    spec = importlib.util.spec_from_file_location("benchmark_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._worker


def _step(
    stage: str, precision: str, *, fused: bool = False, recompute: str = "none", tp: int = 1,
    pp: int = 1,
):  # fmt: skip
    def case(hf_dir: str) -> None:
        _bench_worker()({
            "model": MODEL, "num_layers": 2, "tp": tp, "pp": pp, "micro_batch": 2,
            "global_batch": 4, "distributed_optimizer": True, "grad_reduce_dtype": "fp32",
            "steps": 1, "warmup": 0, "precision": precision, "recompute": recompute,
            "attention": "auto", "seq_len": 16, "stage": stage, "fused_output": fused,
            "adam_impl": "auto",
        })  # fmt: skip

    return case


def _built_on_the_device(hf_dir: str) -> None:
    from megatron_tulu.config import ParallelConfig, model_preset
    from megatron_tulu.models.llama import build_model_chunks
    from megatron_tulu.parallel import init_parallel

    model = model_preset(MODEL)
    init_parallel(ParallelConfig().resolve(1, model), seed=0)
    chunk = build_model_chunks(model, ParallelConfig().resolve(1, model))[0]
    tensors = [*chunk.named_parameters(), *chunk.named_buffers()]
    off = [f"{name} ({t.device})" for name, t in tensors if not t.is_meta]
    if off:
        raise AssertionError(f"built off the device: {off}")


def _cuda_defaults(hf_dir: str) -> None:
    """On CUDA without TE/apex: torch's fused AdamW (adam_impl auto) with its steps on the
    device, and the device-side multi-tensor kernels in megatron's slots."""
    import megatron.core.optimizer.clip_grads as clip_grads

    from megatron_tulu.config import OptimizerConfig, ParallelConfig, model_preset
    from megatron_tulu.engine.adam import torch_adams
    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.parallel import init_parallel
    from megatron_tulu.platform.multi_tensor import multi_tensor_l2_norm, multi_tensor_scale

    model = model_preset(MODEL, num_layers=1)
    dims = ParallelConfig().resolve(1, model)
    init_parallel(dims, seed=0)
    engine = build_engine(model=model, dims=dims, optimizer=OptimizerConfig(), train_steps=1)
    adams = torch_adams(engine.optimizer)
    fused = {g["fused"] for a in adams for g in a.param_groups}
    if engine.adam_impl != "fused" or not adams or fused != {True}:
        raise AssertionError(f"adam_impl {engine.adam_impl!r}, {len(adams)} Adams, fused {fused}")
    if (clip_grads.l2_norm_impl, clip_grads.multi_tensor_scale_impl) != (
        multi_tensor_l2_norm, multi_tensor_scale,
    ):  # fmt: skip
        raise AssertionError("megatron's local multi-tensor fallbacks are still in place")


def _hf_check(tp: int = 1, pp: int = 1, vpp: int | None = None):
    def case(hf_dir: str) -> None:
        from megatron_tulu.tools.hf_check import rank_logits

        tokens = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(0))
        logits = rank_logits(hf_dir, tokens, tp, pp, vpp)
        rank = int(os.environ.get("RANK", "0"))
        if rank != _last_stage_tp_root(tp, pp):  # only there: the logits, on the host
            assert logits is None, f"rank {rank} got logits"
            return
        assert logits.device.type == "cpu" and logits.shape[:2] == (2, 12), logits.shape

    return case


def _last_stage_tp_root(tp: int, pp: int) -> int:
    """Global rank of TP rank 0 on the last pipeline stage (megatron's tp-cp-ep-dp-pp order:
    TP innermost, PP outermost)."""
    return tp * (pp - 1)


def _rows(vocab: int):
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, vocab, (4 + i,), generator=gen).tolist() for i in range(ROWS)]
    responses = [torch.randint(3, vocab, (6 + i,), generator=gen).tolist() for i in range(ROWS)]
    return prompts, responses


def _dpo_reference(tp: int = 1, pp: int = 1):
    return lambda hf_dir: _run_dpo_reference(hf_dir, tp, pp)


def _run_dpo_reference(hf_dir: str, tp: int, pp: int) -> None:
    from megatron.core import parallel_state as ps

    from megatron_tulu.config import ParallelConfig
    from megatron_tulu.engine.build import build_frozen, freeze
    from megatron_tulu.engine.microbatch import shift_rows, slice_rows
    from megatron_tulu.engine.schedule import as_runnable
    from megatron_tulu.models.hf_io import load_hf_weights, read_hf_config
    from megatron_tulu.parallel import init_parallel
    from megatron_tulu.stages.dpo_reference import compute_reference_logps

    model = read_hf_config(hf_dir)
    dims = ParallelConfig(tp=tp, pp=pp, micro_batch_size=2, global_batch_size=ROWS).resolve(
        tp * pp, model
    )
    init_parallel(dims, seed=0)
    frozen = build_frozen(model=model, dims=dims)
    tp_rank = ps.get_tensor_model_parallel_rank()
    load_hf_weights(frozen.chunks, hf_dir, model=model, tp=tp, tp_rank=tp_rank)
    frozen = freeze(frozen)
    prompts, responses = _rows(model.vocab_size)
    seq = torch.zeros(ROWS, 17, dtype=torch.long)
    mask = torch.zeros(ROWS, 16)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        seq[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p) - 1 : len(p) + len(r) - 1] = 1
    micro = slice_rows(shift_rows(seq, mask), 2)
    table = compute_reference_logps(
        as_runnable(frozen.chunks, dims), [(torch.arange(ROWS // 2), micro)],
        num_pairs=ROWS // 2, vocab_size=model.vocab_size,
    )  # fmt: skip
    assert table.device.type == "cpu" and table.shape == (ROWS // 2, 2), table


def _rlvr(algorithm: str, offload_reference: bool, tp: int = 1, pp: int = 1):
    def case(hf_dir: str) -> None:
        from megatron_tulu.config import recipe_from_dict
        from megatron_tulu.models.llama import BuildOptions
        from megatron_tulu.parallel import init_parallel
        from megatron_tulu.stages.rlvr.batch import build_rollout_batch
        from megatron_tulu.stages.rlvr.generation import Rollouts
        from megatron_tulu.stages.rlvr.models import build_policy, build_reference, build_value
        from megatron_tulu.stages.rlvr.update import learn

        recipe = recipe_from_dict({}, [
            f"model.preset={MODEL}", "parallel.micro_batch_size=2",
            f"parallel.global_batch_size={ROWS}", "training.stage=rlvr",
            "training.train_steps=1", f"training.init_from_hf={hf_dir}",
            f"training.offload_reference={str(offload_reference).lower()}",
            "training.fused_output=true", f"rlvr.algorithm={algorithm}",
            f"rlvr.prompts_per_step={ROWS // 2}", "rlvr.samples_per_prompt=2",
            "rlvr.kl_beta=0.05", "value.num_layers=2", f"value.init_from_hf={hf_dir}",
            f"parallel.tp={tp}", f"parallel.pp={pp}",
        ])  # fmt: skip
        dims = recipe.resolve_parallel(tp * pp)
        init_parallel(dims, seed=0)
        options = BuildOptions(attention=recipe.training.attention)
        policy = build_policy(recipe, dims, options)
        value = build_value(recipe, dims, options) if algorithm == "ppo" else None
        reference = build_reference(recipe, dims, options)
        prompts, responses = _rows(recipe.model.vocab_size)
        logps = [[-1.0] * len(r) for r in responses]
        rollouts = Rollouts(
            prompt_ids=prompts, response_ids=responses, vllm_logprobs=logps,
            has_eos=[True] * ROWS, correct=[i % 2 == 0 for i in range(ROWS)],
            datasets=["gsm8k"] * ROWS, policy_version=0,
        )  # fmt: skip
        batch = build_rollout_batch(prompts, responses, logps, pad_id=0, multiple=1)
        learn(recipe, 1, rollouts, batch, policy=policy, value=value, reference=reference)

    return case


def _stage(recipe: str, *overrides: str, tag: str = ""):
    """A whole stage through the training CLI, two steps, the last saved, then resumed from that
    checkpoint (``training.resume=latest``: the load must happen) for a third step, saved too;
    on the tiny-task model from random HF weights and the small embedded task (``task``
    below). Its output goes to the recipe's name + ``tag`` under the work directory."""

    def case(hf_dir: str) -> None:
        import shutil

        import torch.distributed as dist

        from megatron_tulu.train import main

        work = Path(os.environ["MT_META_WORK"])
        out = work / (Path(recipe).stem + tag)
        clean = not dist.is_initialized() or dist.get_rank() == 0
        if clean:  # one rank clears the shared directory, the others wait for it
            shutil.rmtree(out, ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        argv = [
            "--recipe", recipe, f"training.output_dir={out}", "parallel.tp=1",
            "parallel.micro_batch_size=2", "parallel.global_batch_size=4",
            f"data.task_dir={work / 'task'}", "training.train_steps=2",
            "training.save_interval=2", "training.init_from_native=null",
            f"training.init_from_hf={work / 'hf-task'}", *overrides,
        ]  # fmt: skip
        resume = ["training.train_steps=3", "training.save_interval=3", "training.resume=latest"]
        for step, extra in ((2, []), (3, resume)):
            code = main(argv + extra)
            if code != 0:
                raise AssertionError(f"{recipe} to step {step}: exit status {code}")
            if not (out / "checkpoints" / f"step_{step:09d}" / "meta.json").is_file():
                raise AssertionError(f"{recipe}: no checkpoint at step {step}")

    return case


def prepare_stage_inputs(work: Path) -> None:
    """The small embedded task and random HF weights of the tiny-task model (parent process)."""
    from megatron_tulu.config import model_preset
    from megatron_tulu.data.build_task import TaskConfig, build_task
    from megatron_tulu.models.synthetic import make_random_hf_dir

    build_task(work / "task", TaskConfig(
        seed=0, num_sft_train=64, num_pref_train=16, num_rl_train=8, num_eval=8,
    ))  # fmt: skip
    make_random_hf_dir(work / "hf-task", model_preset("tiny-task"))


def _weight_stream(tp: int = 1, pp: int = 1):
    """The weight push's trainer side (:func:`stream_policy_hf_weights`): TP gathers and
    pipeline sends to global rank 0, which gets every HF tensor, full-size, on the device."""

    def case(hf_dir: str) -> None:
        import torch.distributed as dist
        from megatron.core import parallel_state as ps

        from megatron_tulu.config import ParallelConfig
        from megatron_tulu.models.hf_io import load_hf_weights, read_hf_config
        from megatron_tulu.models.llama import build_model_chunks
        from megatron_tulu.parallel import init_parallel
        from megatron_tulu.rollout.checks import hf_tensor_shapes
        from megatron_tulu.rollout.policy_sync import stream_policy_hf_weights

        model = read_hf_config(hf_dir)
        dims = ParallelConfig(tp=tp, pp=pp).resolve(tp * pp, model)
        init_parallel(dims, seed=0)
        chunks = build_model_chunks(model, dims)
        tp_rank = ps.get_tensor_model_parallel_rank()
        load_hf_weights(chunks, hf_dir, model=model, tp=tp, tp_rank=tp_rank)
        got = [(name, t.device.type, tuple(t.shape)) for name, t in
               stream_policy_hf_weights(chunks, model=model)]  # fmt: skip
        if dist.get_rank() != 0:
            assert not got, f"rank {dist.get_rank()} yielded {len(got)} tensors"
            return
        want = {name: ("meta", shape) for name, shape in hf_tensor_shapes(model).items()}
        streamed = {name: (device, shape) for name, device, shape in got}
        if len(got) != len(want) or streamed != want:
            wrong = sorted(n for n in {*want, *streamed} if streamed.get(n) != want.get(n))
            raise AssertionError(f"{len(got)} tensors (want {len(want)}); wrong: {wrong[:3]}")

    return case


CASES: dict[str, Callable[[str], None]] = {
    "model built on the device": _built_on_the_device,
    "CUDA defaults: fused AdamW, device-side multi-tensor kernels": _cuda_defaults,
    "HF logits check": _hf_check(),
    "SFT step fp32": _step("sft", "fp32"),
    "SFT step bf16": _step("sft", "bf16"),
    "SFT step bf16 fused output, full recompute": _step(
        "sft", "bf16", fused=True, recompute="full"
    ),
    "DPO step bf16": _step("dpo", "bf16"),
    "PPO policy step bf16 fused output": _step("ppo", "bf16", fused=True),
    "DPO reference pass": _dpo_reference(),
    "RLVR learn PPO (value helper)": _rlvr("ppo", offload_reference=False),
    "RLVR learn GRPO (reference offloaded)": _rlvr("grpo", offload_reference=True),
    "SFT stage (CLI), checkpoint saved and resumed": _stage("recipes/tulu3-sft-tiny-cpu.yaml"),
    "DPO stage (CLI), checkpoint saved and resumed": _stage("recipes/tulu3-dpo-tiny-cpu.yaml"),
}
# Two ranks, each its part of a TP2 or PP2 layout (the TP2 steps with sequence parallelism).
# The tensors that cross ranks here -- TP gathers and reductions, pipeline sends, the weight
# push, the checkpoint's sharded save -- are the ones world size 1 never makes.
TP2 = {"tp": 2}
PP2 = {"pp": 2}
LAYOUT_CASES: dict[str, Callable[[str], None]] = {
    "TP2 HF logits check": _hf_check(**TP2),
    "PP2 HF logits check": _hf_check(**PP2),
    "TP2 SFT step bf16": _step("sft", "bf16", **TP2),
    "TP2 SFT step bf16 fused output, full recompute": _step(
        "sft", "bf16", fused=True, recompute="full", **TP2
    ),
    "TP2 DPO step bf16": _step("dpo", "bf16", **TP2),
    "TP2 PPO policy step fp32": _step("ppo", "fp32", **TP2),
    "PP2 SFT step bf16": _step("sft", "bf16", **PP2),
    "PP2 SFT step fp32 fused output": _step("sft", "fp32", fused=True, **PP2),
    "PP2 DPO step bf16": _step("dpo", "bf16", **PP2),
    "PP2 PPO policy step bf16 fused output": _step("ppo", "bf16", fused=True, **PP2),
    "TP2 DPO reference pass": _dpo_reference(**TP2),
    "PP2 DPO reference pass": _dpo_reference(**PP2),
    "TP2 RLVR learn PPO (value helper)": _rlvr("ppo", offload_reference=False, **TP2),
    "PP2 RLVR learn GRPO (reference offloaded)": _rlvr("grpo", offload_reference=True, **PP2),
    "TP2 weight push stream": _weight_stream(**TP2),
    "PP2 weight push stream": _weight_stream(**PP2),
    "TP2 SFT stage (CLI), checkpoint saved and resumed": _stage(
        "recipes/tulu3-sft-tiny-cpu.yaml", "parallel.tp=2", tag="-tp2"
    ),
    "PP2 DPO stage (CLI) fused output, checkpoint saved and resumed": _stage(
        "recipes/tulu3-dpo-tiny-cpu.yaml",
        "parallel.pp=2",
        "training.fused_output=true",
        "dpo.forward=separate",
        tag="-pp2",
    ),
}


def _norm_built_on_the_cpu() -> None:
    """The deliberate bug (the one this stand-in found): every RMSNorm weight on the CPU."""
    import megatron_tulu.models.norm as norm

    init = norm.LlamaRMSNorm.__init__

    def cpu_init(self, config, hidden_size, eps=1e-5, **unused):
        init(self, config, hidden_size, eps, **unused)
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))

    norm.LlamaRMSNorm.__init__ = cpu_init


def _stage_buffers_on_the_cpu() -> None:
    """A deliberate pipeline bug: what the last stage hands the others (reports, log-probs)
    crosses the pipeline group in host memory."""
    import megatron_tulu.engine.collect as collect

    collect.comm_device = lambda group=None: torch.device("cpu")


PLANTS = {"cpu_norm": _norm_built_on_the_cpu, "cpu_stage_buffers": _stage_buffers_on_the_cpu}


def meta_cuda_worker(
    hf_dir: str, names: list[str] | None = None, *, plant: str | None = None
) -> dict[str, str | None]:
    """Installs the stand-in, then runs each case; a case's traceback, or None. ``plant`` (a
    key of :data:`PLANTS`) plants that bug first."""
    from mt_testing.meta_cuda import install

    install()
    from megatron_tulu.parallel import destroy_parallel

    world = int(os.environ.get("WORLD_SIZE", "1"))
    table = CASES if world == 1 else LAYOUT_CASES
    if world > 1:
        _one_group_for_all_cases()
    if plant is not None:
        PLANTS[plant]()
    results: dict[str, str | None] = {}
    for name in names or list(table):
        try:
            table[name](hf_dir)
            results[name] = None
        except Exception:
            results[name] = traceback.format_exc()
        finally:
            destroy_parallel()
    return results


def _one_group_for_all_cases(timeout_s: float = 120.0) -> None:
    """World size 2+: one gloo group under every case (the cases' own destroy calls leave it),
    with a short timeout, so a case that fails on one rank only ends in an error, not a hang
    in the other rank's next real (object) collective. After such a one-sided failure the
    ranks' collectives are out of step: the cases after it may fail for that reason alone, so
    read the first failure first."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    destroy = dist.destroy_process_group
    dist.destroy_process_group = lambda group=None: None if group is None else destroy(group)


def _device_in_backward() -> str:
    """Where a custom Function's backward puts a "cuda" tensor (full recompute and megatron's
    sequence-parallel gathers build tensors there)."""
    seen: list[str] = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a: torch.Tensor) -> torch.Tensor:
            return a * 1

        @staticmethod
        def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
            seen.append(torch.empty(1, device="cuda").device.type)
            return grad

    leaf = torch.ones(2, device="cuda", requires_grad=True)
    Probe.apply(leaf).sum().backward()
    torch.autograd.grad(Probe.apply(leaf).sum(), leaf)
    return ",".join(seen)


def _written_back(*, host_write: bool) -> str:
    """A host-made count written in place, then summed over the ranks and read back: a host
    write keeps it known (replayed on the host values), a computed one makes it unknown."""
    count = torch.zeros(2, device="cuda")
    count[0] = 3
    count += 1
    if not host_write:
        count.add_(torch.ones(2, device="cuda").cumsum(0))  # computed on the device
    torch.distributed.all_reduce(count)
    return str(count.tolist())


def stand_in_self_check() -> dict[str, str]:
    """What the stand-in itself does with the usual bugs, each as the exception's class name
    ("" when nothing was raised), and what values read back."""
    from mt_testing.meta_cuda import install

    install()
    from megatron_tulu.config import ParallelConfig, model_preset
    from megatron_tulu.parallel import comm_device, destroy_parallel, init_parallel

    def outcome(fn: Callable[[], object]) -> str:
        try:
            fn()
        except Exception as exc:
            return type(exc).__name__
        return ""

    world = int(os.environ.get("WORLD_SIZE", "1"))
    init_parallel(ParallelConfig().resolve(world, model_preset(MODEL)), seed=0)
    try:
        dist = torch.distributed
        dev = torch.ones(3, 4, device="cuda")
        index = torch.tensor([2, 0, 1]).cuda()
        flag = torch.tensor([0], device=comm_device())
        dist.all_reduce(flag)
        seen = {}
        if world > 1:  # the pipeline's shape handshake, and NCCL's rule for point-to-point
            rank, peer = dist.get_rank(), 1 - dist.get_rank()
            shape = (
                torch.tensor([7, 5], device="cuda")
                if rank == 1
                else torch.empty(2, dtype=torch.long, device="cuda")
            )
            dist.broadcast(shape, src=1)
            count = torch.tensor([rank + 1], device=comm_device())
            dist.all_reduce(count)
            send = dist.P2POp(dist.isend, torch.ones(2), peer)
            seen = {
                "shape from rank 1": str(shape.tolist()),
                "host counts summed": str(count.item()),
                "cpu tensor to send": outcome(lambda: dist.send(torch.ones(2), dst=peer)),
                "cpu tensor to batch p2p": outcome(lambda: dist.batch_isend_irecv([send])),
                "device tensor to batch p2p": outcome(
                    lambda: dist.batch_isend_irecv([dist.P2POp(dist.isend, dev, peer)])
                ),
            }
        return seen | {
            "device in backward": _device_in_backward(),
            "device": str(dev.device),
            "cpu operand": outcome(lambda: dev + torch.ones(3, 4)),
            "cpu scalar": outcome(lambda: dev * torch.tensor(2.0)),
            "cpu matmul": outcome(lambda: dev @ torch.ones(4, 2)),
            "cpu index to gather": outcome(
                lambda: dev.gather(1, torch.zeros(3, 1, dtype=torch.long))
            ),
            "cpu index to getitem": outcome(lambda: dev[torch.tensor([0, 2])]),
            "cpu tensor to a collective": outcome(lambda: dist.all_reduce(torch.ones(2))),
            "device tensor to a collective": outcome(lambda: dist.all_reduce(dev)),
            "index read back": str(index.cpu().tolist()),
            "flag read back": str(flag.item()),
            "computed read back": str((dev * 3).sum().item()),
            "computed flag": str(bool((dev < 0).any())),
            "host write read back": _written_back(host_write=True),
            "computed write read back": _written_back(host_write=False),
        }
    finally:
        destroy_parallel()
