"""Exact save/resume through megatron-core dist_checkpointing, atomic commits, layout changes.

A run of 4 steps is compared with 2 steps + save + hard exit (``os._exit``: no cleanup, as when
a scheduler kills a job) + a fresh process that resumes from ``latest`` for 2 more steps. In
fp32 on CPU the same layout must reproduce every loss and every weight bit for bit: the same
operations run in the same order on the same values, so any difference means some state (Adam
moments or step, LR schedule, data position) was not restored.
"""

from __future__ import annotations

import json

import pytest
from mt_testing.resume import train_worker

from megatron_tulu.checkpoint.layout import list_steps, read_latest
from megatron_tulu.config import OptimizerConfig, model_preset
from megatron_tulu.data.corpus import write_corpus
from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow
MODEL = model_preset("tiny")
OPT = OptimizerConfig(lr=1e-3, weight_decay=0.1, lr_warmup_steps=1, lr_decay_style="cosine")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(write_corpus(tmp_path_factory.mktemp("data") / "c.txt", 400, seed=1))


def _run(world, **kw):
    results = run_ranks(train_worker, world, model=MODEL, total_steps=4, optimizer=OPT, **kw)
    return results[-1]  # the last rank is on the last pipeline stage


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_killed_and_resumed_run_is_bit_exact(tmp_path, corpus, tp, pp):
    world = tp * pp
    full = _run(world, corpus=corpus, tp=tp, pp=pp, steps=4)
    root = str(tmp_path / "ckpt")
    killed = _run(
        world,
        corpus=corpus,
        tp=tp,
        pp=pp,
        steps=4,
        ckpt_root=root,
        save_at=(1, 2),
        die_after_save=True,
    )
    assert killed is None  # the process really died after the step-2 save
    assert read_latest(root) == 2
    resumed = _run(world, corpus=corpus, tp=tp, pp=pp, steps=2, ckpt_root=root, resume=True)
    assert resumed["resumed_step"] == 2 and resumed["rng_restored"] is True
    assert sorted(resumed["losses"]) == [3, 4]
    for step in (3, 4):
        assert resumed["losses"][step] == full["losses"][step]  # (loss, lr), exactly
    assert _max_diff(resumed["weights"], full["weights"]) == 0.0
    # The run moved the weights away from the checkpoint: the equality above is not vacuous.
    assert full["losses"][4][0] < full["losses"][1][0]


def test_resume_on_another_data_parallel_size(tmp_path, corpus):
    """DP2 -> DP1. Exact: step, LR, data position (the same rows form each global batch) and the
    restored optimizer state. Not bit-exact: losses and weights, because the gradient of the
    global batch is summed in another order (an all-reduce over two ranks vs one rank's
    micro-batch accumulation): observed ~1e-7 in loss, ~1e-8 in weights."""
    full = _run(2, corpus=corpus, steps=4)
    root = str(tmp_path / "ckpt")
    _run(2, corpus=corpus, steps=2, ckpt_root=root, save_at=(2,))
    resumed = _run(1, corpus=corpus, steps=2, ckpt_root=root, resume=True)
    assert resumed["rng_restored"] is False  # another layout: ranks re-seeded
    for step in (3, 4):
        loss, lr = resumed["losses"][step]
        assert lr == full["losses"][step][1]
        assert loss == pytest.approx(full["losses"][step][0], abs=1e-6)
    assert _max_diff(resumed["weights"], full["weights"]) <= 1e-6


def test_optimizer_resharding_across_tp_is_refused_weights_only_allowed(tmp_path, corpus):
    root = str(tmp_path / "ckpt")
    saved = _run(2, corpus=corpus, tp=2, steps=2, ckpt_root=root, save_at=(2,))
    with pytest.raises(RuntimeError, match=r"reshards only across the data-parallel size"):
        _run(2, corpus=corpus, pp=2, steps=1, ckpt_root=root, resume=True)
    weights_only = _run(
        2, corpus=corpus, pp=2, steps=1, ckpt_root=root, resume=True, load_optimizer=False
    )
    assert weights_only["resumed_step"] == 2
    # Same weights, another layout: the step-3 forward matches up to reduction order; the LR
    # schedule continues from step 2 (fresh Adam moments, so the update itself differs).
    full = _run(2, corpus=corpus, tp=2, steps=3)
    assert weights_only["losses"][3][0] == pytest.approx(full["losses"][3][0], abs=1e-5)
    assert weights_only["losses"][3][1] == full["losses"][3][1]
    assert saved["losses"][2] == full["losses"][2]


@pytest.mark.parametrize("phase", ["written", "meta"])
def test_save_killed_midway_keeps_previous_checkpoint(tmp_path, corpus, phase):
    root = tmp_path / "ckpt"
    _run(2, corpus=corpus, tp=2, steps=2, ckpt_root=str(root), save_at=(1, 2), fault_phase=phase)
    assert read_latest(root) == 1
    assert list_steps(root) == [1]
    assert list(root.glob(".tmp-step_000000002-*"))  # the dead save's leftovers, never read
    resumed = _run(2, corpus=corpus, tp=2, steps=1, ckpt_root=str(root), resume=True)
    assert resumed["resumed_step"] == 1
    full = _run(2, corpus=corpus, tp=2, steps=2)
    assert resumed["losses"][2] == full["losses"][2]


def test_kill_after_commit_before_latest_and_retention(tmp_path, corpus):
    root = tmp_path / "ckpt"
    _run(1, corpus=corpus, steps=3, ckpt_root=str(root), save_at=(1, 2, 3), fault_phase="committed")
    # step 3 is complete on disk but `latest` was not moved: resume uses step 2
    assert read_latest(root) == 2 and list_steps(root) == [1, 2, 3]
    resumed = _run(1, corpus=corpus, steps=3, ckpt_root=str(root), resume=True, save_at=(3, 4, 5))
    assert resumed["resumed_step"] == 2
    assert read_latest(root) == 5
    assert list_steps(root) == [4, 5]  # keep_last=2 (the re-saved step 3 rotated out too)
    assert not list(root.glob(".tmp-*"))
    meta = json.loads((root / "step_000000005" / "meta.json").read_text())
    assert meta["step"] == 5 and meta["consumed_samples"] == 20
    assert meta["layout"]["tp"] == 1 and meta["layout"]["padded_vocab_size"] == 1024
    assert meta["model"]["num_query_groups"] == MODEL.num_query_groups


def test_latest_errors_are_clear(tmp_path):
    from megatron_tulu.checkpoint.layout import resolve_step_dir

    with pytest.raises(FileNotFoundError, match="no 'latest' marker"):
        resolve_step_dir(tmp_path)
    (tmp_path / "latest").write_text("garbage\n")
    with pytest.raises(ValueError, match="expected a line like 'step_000000120'"):
        resolve_step_dir(tmp_path)
    (tmp_path / "latest").write_text("step_000000007\n")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_step_dir(tmp_path)
