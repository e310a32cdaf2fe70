"""DPO (Tülu 3 stage 2): preference pairs, cached reference log-probs, the pair loss.

Before the first step the reference log-probs of every pair (chosen and rejected response sums
under the INITIAL weights -- the SFT checkpoint the run starts from) are computed forward-only
through the same parallel layout and cached on disk (:mod:`megatron_tulu.stages.dpo_reference`); a
resumed run reads the cache, since its weights have moved. Each micro-batch holds
``micro_batch_size / 2`` pairs, chosen rows then rejected rows, in one forward (so
``parallel.micro_batch_size`` and ``global_batch_size`` count sequences, two per pair). With
``dpo.forward: separate`` the rank's chosen rows fill the first half of its micro-batches and
the rejected rows the second half (two forwards per pair, any micro-batch size); before each
step a forward-only pass gives the policy log-probs that couple the sides
(:func:`megatron_tulu.losses.dpo.pair_loss_coefficients`).

:class:`PreferenceBatches` is the data side (pairs -> micro-batches with their reference
values); :class:`DPOTask` adds what needs the model (the reference pass, the coefficients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from megatron_tulu.config import ParallelDims, RecipeConfig
from megatron_tulu.data.preference import PreferenceDataset
from megatron_tulu.data.sampler import ShardedSampler
from megatron_tulu.data.tokenizers import load_tokenizer
from megatron_tulu.engine.build import Engine
from megatron_tulu.engine.forward import ForwardStep, forward_step
from megatron_tulu.engine.microbatch import MicroBatch, slice_rows
from megatron_tulu.engine.schedule import Runnable
from megatron_tulu.losses.dpo import dpo_pair_loss, dpo_side_loss, pair_loss_coefficients
from megatron_tulu.stages.data_files import (
    chat_dataset,
    stage_sampler,
    task_files,
    tokenizer_ref,
)
from megatron_tulu.stages.dpo_reference import (
    ReferenceLogpCache,
    cache_key,
    compute_reference_logps,
    pair_logps,
)
from megatron_tulu.stages.loop import StageContext
from megatron_tulu.stages.supervised import SupervisedStage

KEYS = ("tokens", "labels", "loss_mask", "position_ids")


@dataclass(kw_only=True)
class PreferenceBatches:
    """Pairs -> this DP rank's micro-batches (``pairing``: concat or separate), each with the
    reference log-prob sums of the pairs its rows belong to once ``reference`` is set."""

    dataset: PreferenceDataset
    dims: ParallelDims
    seq_length: int
    pairing: str = "concat"  # dpo.forward: one forward per pair, or two
    reference: torch.Tensor | None = None  # [pairs, 2]

    def micro(self, indices: list[int]) -> list[MicroBatch]:
        # Pad to the step's longest row (rounded up for TP/SP and into 2 * cp chunks for context
        # parallelism), not to seq_length: every rank of a model replica reads the same pairs,
        # so all its micro-batches share one length. (seq_length is itself such a multiple.)
        longest = max(
            len(ids) - 1
            for i in indices
            for ids in (self.dataset.examples[i].chosen_ids, self.dataset.examples[i].rejected_ids)
        )
        multiple = math.lcm(8, self.dims.tp, 2 * self.dims.cp)
        width = min(self.seq_length, -(-longest // multiple) * multiple)
        batch = self.dataset.batch(indices, pad_to=width)
        chosen = {k: getattr(batch, f"chosen_{k}") for k in KEYS}
        rejected = {k: getattr(batch, f"rejected_{k}") for k in KEYS}
        m, n = self.dims.micro_batch_size, self.dims.num_microbatches
        if self.pairing == "separate":
            rows = {k: torch.cat([chosen[k], rejected[k]]) for k in KEYS}
            out = slice_rows(rows, m, n)
        else:
            sides = zip(slice_rows(chosen, m // 2, n), slice_rows(rejected, m // 2, n), strict=True)
            out = [{k: torch.cat([c[k], r[k]]) for k in KEYS} for c, r in sides]
        if self.reference is not None:
            ref = self.reference[batch.sample_ids].float()  # [pairs, 2]
            for mb, (c, r) in zip(out, self._pair_slices(out), strict=True):
                mb["ref_chosen"], mb["ref_rejected"] = ref[c, 0], ref[r, 1]
        return out

    def _pair_slices(self, micro: list[MicroBatch]) -> list[tuple[slice, slice]]:
        """Per micro-batch: which pairs its chosen rows and its rejected rows belong to."""
        slices, start = [], 0
        if self.pairing == "separate":
            half = sum(mb["tokens"].shape[0] for mb in micro) // 2
            for mb in micro:
                n = mb["tokens"].shape[0]
                c = slice(min(start, half), min(start + n, half))
                r = slice(max(start - half, 0), max(start + n - half, 0))
                slices.append((c, r))
                start += n
            return slices
        for mb in micro:
            p = mb["tokens"].shape[0] // 2
            slices.append((slice(start, start + p), slice(start, start + p)))
            start += p
        return slices


def attach_pair_coefficients(
    micro: list[MicroBatch], model: Runnable, vocab_size: int, *, beta: float, loss_type: str,
    fused_output: bool = False,
) -> list[MicroBatch]:  # fmt: skip
    """Separate pairing (first half of the rows chosen, second half rejected, each micro-batch
    with ``ref_chosen``/``ref_rejected`` of the pairs its rows belong to): runs the policy
    forward-only (``fused_output``: without whole logits), then sets each row's ``coef`` and
    ``report`` in place."""
    policy = pair_logps(model, micro, vocab_size, pairing="separate", fused_output=fused_output)
    rows_len = torch.cat([mb["loss_mask"] for mb in micro]).sum(dim=-1)
    half = rows_len.shape[0] // 2
    lengths = torch.stack([rows_len[:half], rows_len[half:]], dim=1)
    reference = torch.stack(
        [torch.cat([mb["ref_chosen"] for mb in micro]),
         torch.cat([mb["ref_rejected"] for mb in micro])], dim=1,
    )  # fmt: skip
    coef, report = pair_loss_coefficients(
        policy, reference, lengths, beta=beta, loss_type=loss_type
    )
    row_coef = torch.cat([coef[:, 0], coef[:, 1]])
    row_report = torch.cat([report, torch.zeros_like(report)])
    start = 0
    for mb in micro:
        n = mb["tokens"].shape[0]
        mb["coef"], mb["report"] = row_coef[start : start + n], row_report[start : start + n]
        start += n
    return micro


@dataclass(kw_only=True)
class DPOTask:
    batches: PreferenceBatches
    train_file: str
    sampler: ShardedSampler
    forward_step: ForwardStep
    cache: ReferenceLogpCache
    beta: float = 5.0
    loss_type: str = "dpo_norm"
    vocab_size: int = 0
    report_key: str = "dpo"
    count_name: str = "pairs"
    tokenizer_ref: dict[str, Any] = field(default_factory=dict)
    fused_output: bool = False  # training.fused_output: the forward-only passes too

    def metrics(self, totals: tuple[float, ...]) -> dict[str, float]:
        """From the summed "dpo" report [loss, pairs, accuracy, chosen reward, rejected reward]."""
        pairs = max(totals[1], 1.0)
        return {
            "preference_accuracy": totals[2] / pairs,
            "reward_chosen": totals[3] / pairs,
            "reward_rejected": totals[4] / pairs,
            "reward_margin": (totals[3] - totals[4]) / pairs,
        }

    def microbatches(self, consumed: int) -> list[MicroBatch]:
        if self.batches.reference is None:
            raise RuntimeError("DPOTask.prepare() must run before training")
        return self.batches.micro(self.sampler.rank_batch(consumed // 2))

    def before_step(self, engine: Engine, micro: list[MicroBatch]) -> None:
        if self.batches.pairing == "separate":
            attach_pair_coefficients(
                micro, engine, self.vocab_size, beta=self.beta, loss_type=self.loss_type,
                fused_output=self.fused_output,
            )  # fmt: skip

    def prepare(self, engine: Engine, *, resuming: bool) -> None:
        """Loads the reference table from the cache, or computes it now (initial weights)."""
        table = self.cache.load()
        if table is None:
            if resuming:
                raise FileNotFoundError(
                    f"resuming DPO but the reference log-probs cache {self.cache.path} is "
                    "missing: the weights have moved, so they can no longer be computed; restore "
                    "the cache or restart DPO from its initial checkpoint"
                )
            table = compute_reference_logps(
                engine, self._reference_batches(engine), num_pairs=len(self.batches.dataset),
                vocab_size=engine.model.vocab_size, pairing=self.batches.pairing,
                fused_output=self.fused_output,
            )  # fmt: skip
            self.cache.save(table)
        self.batches.reference = table

    def _reference_batches(self, engine: Engine):
        n, rank_pairs = len(self.batches.dataset), self.sampler.rank_batch_size
        dp, d = engine.pg.dp.size(), engine.pg.dp.rank()
        for start in range(0, n, rank_pairs * dp):
            mine = [start + d * rank_pairs + k for k in range(rank_pairs)]
            mine = [i if i < n else i % n for i in mine]  # wrap the last batch
            yield torch.tensor(mine), self.batches.micro(mine)


def _check_pairing(pairing: str, dims: ParallelDims) -> None:
    if pairing == "concat" and dims.micro_batch_size % 2:
        raise ValueError(
            f"parallel.micro_batch_size ({dims.micro_batch_size}) must be even for DPO with "
            "dpo.forward=concat: it counts sequences, a chosen and a rejected one per pair; use an "
            "even size or dpo.forward=separate"
        )
    if pairing == "separate" and (dims.micro_batch_size * dims.num_microbatches) % 2:
        raise ValueError(
            f"dpo.forward=separate needs an even number of sequences per data-parallel rank, got "
            f"micro_batch_size {dims.micro_batch_size} x num_microbatches "
            f"{dims.num_microbatches}: raise parallel.global_batch_size"
        )


def dpo_task(recipe: RecipeConfig, dims: ParallelDims) -> DPOTask:
    data, seq, pairing = recipe.data, recipe.training.seq_length, recipe.dpo.forward
    _check_pairing(pairing, dims)
    train_file, tok_path = task_files(recipe, "pref_train.jsonl")
    tokenizer = load_tokenizer(tok_path)
    dataset = chat_dataset(recipe, "preference", tokenizer, tok_path, train_file)
    sampler = stage_sampler(
        recipe, dims, what="DPO", path=train_file, report=dataset.report,
        num_samples=len(dataset), global_batch_size=dims.global_batch_size // 2,
    )  # fmt: skip
    vocab, beta, loss_type = recipe.model.vocab_size, recipe.dpo.beta, recipe.dpo.loss_type
    if pairing == "separate":
        loss = partial(dpo_side_loss, vocab_size=vocab)
    else:
        loss = partial(dpo_pair_loss, vocab_size=vocab, beta=beta, loss_type=loss_type)
    return DPOTask(
        batches=PreferenceBatches(dataset=dataset, dims=dims, seq_length=seq, pairing=pairing),
        train_file=train_file, sampler=sampler,
        forward_step=forward_step(loss, fused_output=recipe.training.fused_output),
        cache=reference_cache(recipe, dataset.fingerprint), beta=beta, loss_type=loss_type,
        vocab_size=vocab, tokenizer_ref=tokenizer_ref(tok_path, data.chat_template),
        fused_output=recipe.training.fused_output,
    )  # fmt: skip


def reference_cache(recipe: RecipeConfig, data_key: str) -> ReferenceLogpCache:
    t = recipe.training
    init = t.init_from_native or t.init_from_hf or "random-init"
    key = cache_key(
        data=data_key,
        init=str(init), seq_length=t.seq_length, template=recipe.data.chat_template,
        max_length=recipe.data.max_length, seed=t.seed, model=recipe.model.name,
    )  # fmt: skip
    cache_dir = recipe.dpo.reference_cache_dir or str(Path(t.output_dir) / "reference_cache")
    return ReferenceLogpCache(cache_dir, key)


def dpo_stage(ctx: StageContext) -> SupervisedStage:
    return SupervisedStage(ctx, dpo_task)
