"""Rank worker: every loss keeps its outputs on its inputs' device.

No GPU is needed to catch a tensor made on the wrong device: with every input on PyTorch's
"meta" device (shapes only, no data), a constant made on the CPU and mixed into the result
(``torch.stack([cuda_tensor, torch.tensor(1.0)])`` is the usual bug) raises, and anything
returned on the CPU shows up in the device check.
"""

from __future__ import annotations

from functools import partial

import torch


def loss_output_devices() -> dict[str, list[str]]:
    """For each loss: the devices of (loss, count, every report tensor) on meta inputs."""
    from megatron_tulu.config import ParallelConfig, model_preset
    from megatron_tulu.engine.forward import forward_step
    from megatron_tulu.losses.dpo import dpo_pair_loss, dpo_side_loss
    from megatron_tulu.losses.ppo import policy_loss, value_loss
    from megatron_tulu.losses.sft import sft_loss
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    init_parallel(ParallelConfig().resolve(1, model_preset("tiny")), seed=1)
    try:
        meta, b, s, v = torch.device("meta"), 4, 6, 32
        base = {
            "tokens": torch.zeros(b, s, dtype=torch.long, device=meta),
            "labels": torch.zeros(b, s, dtype=torch.long, device=meta),
            "loss_mask": torch.ones(b, s, device=meta),
            "position_ids": torch.zeros(b, s, dtype=torch.long, device=meta),
        }
        rl = {k: torch.zeros(b, s, device=meta) for k in ("old_logp", "advantages", "ref_logp")}
        dpo = {"ref_chosen": torch.zeros(b // 2, device=meta)}
        dpo["ref_rejected"] = dpo["ref_chosen"]
        side = {"coef": torch.zeros(b, device=meta), "report": torch.zeros(b, 5, device=meta)}
        values = {k: torch.zeros(b, s, device=meta) for k in ("old_values", "returns")}
        logits = torch.zeros(b, s, v, device=meta, requires_grad=True)
        cases = {
            "sft mean": (partial(sft_loss, vocab_size=v), base, logits),
            "sft sum": (partial(sft_loss, vocab_size=v, reduction="sum"), base, logits),
            # loss_type "sigmoid": dpo_norm's empty-response check reads values (not on meta)
            "dpo pair": (
                partial(dpo_pair_loss, vocab_size=v, beta=0.1, loss_type="sigmoid"),
                base | dpo,
                logits,
            ),
            "dpo side": (partial(dpo_side_loss, vocab_size=v), base | side, logits),
            "ppo": (partial(policy_loss, vocab_size=v, clip=0.2), base | rl, logits),
            "grpo": (
                partial(policy_loss, vocab_size=v, clip=0.2, kl_beta=0.1, kl_estimator="k3"),
                base | rl,
                logits,
            ),
            "value": (
                partial(value_loss, clip=0.2, coef=0.5),
                base | values,
                torch.zeros(b, s, 1, device=meta, requires_grad=True),
            ),
        }
        out: dict[str, list[str]] = {}
        for name, (fn, batch, output) in cases.items():
            loss, count, report = fn(batch, output)
            out[name] = [str(loss.device), str(count.device)]
            out[name] += [str(t.device) for t in report.values()]
        # forward_step moves a CPU micro-batch to the model's device before the model sees it
        model = torch.nn.Linear(2, 2, device=meta)
        seen: list[str] = []

        def fake_forward(tokens, position_ids, attention_mask):
            seen.extend(str(t.device) for t in (tokens, position_ids))
            return logits

        model.forward = fake_forward  # type: ignore[method-assign]
        cpu_batch = {k: torch.zeros_like(t, device="cpu") for k, t in base.items()}
        _, loss_fn = forward_step(partial(sft_loss, vocab_size=v))(iter([cpu_batch]), model)
        loss, count, report = loss_fn(logits)
        out["forward_step"] = [*seen, str(loss.device), str(count.device)]
        return out
    finally:
        destroy_parallel()
