"""``optimizer.adam_impl``: torch's fused AdamW in megatron's optimizers (engine/adam.py).

torch's fused AdamW runs on the CPU too, so everything but the speed is checked here: it steps
megatron's distributed and non-distributed optimizers to the same weights as the foreach kernel
(up to rounding), a killed and resumed fused run is bit-exact, and a checkpoint saved by a
foreach run resumes with the fused kernel (the saved param groups would bring back foreach).

Tolerance: fused and foreach compute the same Adam update with differently ordered float32
operations; after 4 steps of lr 1e-3 on the tiny model the weights differ by 7e-9 (bound 1e-6,
three orders below one step's update of ~1e-3) and the losses by 2e-8 relative (bound 1e-6);
measured on this 2-core CPU, both with and without the distributed optimizer.
"""

from __future__ import annotations

import math

import pytest
from mt_testing.resume import train_worker

from megatron_tulu.config import OptimizerConfig, model_preset
from megatron_tulu.data.corpus import write_corpus
from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow
MODEL = model_preset("tiny")


def _opt(impl: str, **kw) -> OptimizerConfig:
    return OptimizerConfig(
        lr=1e-3, weight_decay=0.1, lr_warmup_steps=1, lr_decay_style="cosine", adam_impl=impl,
        **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(write_corpus(tmp_path_factory.mktemp("data") / "c.txt", 400, seed=1))


def _run(**kw):
    return run_ranks(train_worker, 1, model=MODEL, total_steps=4, **kw)[0]


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("distributed", [True, False], ids=["distributed", "plain"])
def test_fused_steps_to_the_foreach_weights(corpus, distributed: bool) -> None:
    foreach = _run(
        corpus=corpus, steps=4, optimizer=_opt("foreach", use_distributed_optimizer=distributed)
    )
    fused = _run(
        corpus=corpus, steps=4, optimizer=_opt("fused", use_distributed_optimizer=distributed)
    )
    assert foreach["adam_fused"] == [False] and fused["adam_fused"] == [True]
    assert fused["adam_steps"] == foreach["adam_steps"] == ["torch.float32@cpu"]
    for step in range(1, 5):
        (a, lr_a), (b, lr_b) = fused["losses"][step], foreach["losses"][step]
        assert lr_a == lr_b and math.isclose(a, b, rel_tol=1e-6), (step, a, b)
    assert _max_diff(fused["weights"], foreach["weights"]) < 1e-6
    assert foreach["losses"][4][0] < foreach["losses"][1][0]  # the steps moved the weights


def test_auto_is_foreach_on_the_cpu(corpus) -> None:
    assert _run(corpus=corpus, steps=1, optimizer=_opt("auto"))["adam_fused"] == [False]


def test_killed_and_resumed_fused_run_is_bit_exact(tmp_path, corpus) -> None:
    opt = _opt("fused")
    full = _run(corpus=corpus, steps=4, optimizer=opt)
    root = str(tmp_path / "ckpt")
    killed = _run(corpus=corpus, steps=4, optimizer=opt, ckpt_root=root, save_at=(2,),
                  die_after_save=True)  # fmt: skip
    assert killed is None
    resumed = _run(corpus=corpus, steps=2, optimizer=opt, ckpt_root=root, resume=True)
    assert resumed["resumed_step"] == 2 and resumed["adam_fused"] == [True]
    for step in (3, 4):
        assert resumed["losses"][step] == full["losses"][step]
    assert _max_diff(resumed["weights"], full["weights"]) == 0.0


def test_a_foreach_checkpoint_resumes_with_the_fused_kernel(tmp_path, corpus) -> None:
    full = _run(corpus=corpus, steps=4, optimizer=_opt("foreach"))
    root = str(tmp_path / "ckpt")
    _run(corpus=corpus, steps=2, optimizer=_opt("foreach"), ckpt_root=root, save_at=(2,))
    resumed = _run(corpus=corpus, steps=2, optimizer=_opt("fused"), ckpt_root=root, resume=True)
    # the loaded param groups said foreach; the run's own choice was applied again
    assert resumed["adam_fused"] == [True] and resumed["adam_steps"] == ["torch.float32@cpu"]
    for step in (3, 4):
        assert math.isclose(resumed["losses"][step][0], full["losses"][step][0], rel_tol=1e-6)
    assert _max_diff(resumed["weights"], full["weights"]) < 1e-6
