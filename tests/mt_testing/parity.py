"""Workers that run one layout from HF weights and report logits, loss and updated weights.

Shared by the parity tests and the benchmarks, so that every layout runs exactly the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from megatron_tulu.config import ModelConfig, OptimizerConfig, ParallelConfig
from megatron_tulu.models.synthetic import fixed_tokens, make_random_hf_dir  # noqa: F401 (re-export)


@dataclass(frozen=True, kw_only=True)
class LayoutRun:
    logits: torch.Tensor | None  # [rows, seq, vocab]; None off the last pipeline stage
    loss: float
    grad_norm: float | None
    weights: dict[str, torch.Tensor]


def layout_worker(
    *,
    model: ModelConfig,
    hf_dir: str,
    tp: int,
    pp: int,
    vpp: int | None,
    tokens: torch.Tensor,
    micro_batch_size: int,
    optimizer: OptimizerConfig,
    use_distributed_optimizer: bool | None = None,
    recompute: str = "none",
    sequence_parallel: bool = False,
    overlap_grad_reduce: bool = False,
    attention: str = "local",
    precision: str = "fp32",
) -> LayoutRun:
    """Runs on every rank: load HF weights, forward logits of the whole batch, one train step.

    Returns on every rank; the logits (all rows, gathered over DP) are set on the last pipeline
    stage, None elsewhere; ``weights`` are the gathered HF-named weights after the step.
    """
    import dataclasses

    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import forward_logits, train_step
    from megatron_tulu.models.hf_io import gather_hf_state_dict, load_hf_weights
    from megatron_tulu.models.llama import BuildOptions
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = ParallelConfig(
        tp=tp,
        pp=pp,
        vpp=vpp,
        micro_batch_size=micro_batch_size,
        sequence_parallel=sequence_parallel,
        global_batch_size=tokens.shape[0],
    ).resolve(world, model)
    init_parallel(dims, seed=1234)
    try:
        opt = optimizer
        if use_distributed_optimizer is not None:
            opt = dataclasses.replace(opt, use_distributed_optimizer=use_distributed_optimizer)
        engine = build_engine(
            model=model,
            dims=dims,
            optimizer=opt,
            train_steps=1,
            options=BuildOptions(recompute=recompute, attention=attention, precision=precision),
            overlap_grad_reduce=overlap_grad_reduce,
            load_weights=lambda chunks: load_hf_weights(
                chunks, hf_dir, model=model, tp=tp, tp_rank=ps.get_tensor_model_parallel_rank()
            ),
        )
        batches = split_global_batch(tokens, None, dims=dims, dp_rank=ps.get_data_parallel_rank())
        logits = forward_logits(engine, batches, model.vocab_size)
        if ps.is_pipeline_last_stage(ignore_virtual=True):
            mine = torch.cat(logits, dim=0)
            parts = [torch.empty_like(mine) for _ in range(dims.dp)]
            dist.all_gather(parts, mine, group=ps.get_data_parallel_group())
            logits = torch.cat(parts, dim=0)
        else:
            logits = None  # reported by the last stage only
        result = train_step(engine, batches)
        weights = gather_hf_state_dict(engine.raw_chunks(), model=model)
        return LayoutRun(  # on the CPU, to compare with transformers there (a GPU run too)
            logits=None if logits is None else logits.cpu(),
            loss=result.loss,
            grad_norm=result.grad_norm,
            weights={k: v.cpu() for k, v in weights.items()},
        )
    finally:
        destroy_parallel()


def hf_reference(*, hf_dir: str, tokens: torch.Tensor, optimizer: OptimizerConfig) -> LayoutRun:
    """The same logits and one step with plain transformers + a torch optimizer.

    Mirrors megatron's choices: mean token loss over the batch, global-norm clipping, AdamW
    (decoupled decay) or SGD (momentum 0.9), with weight decay on matrices only (megatron exempts
    1-D params: norms and biases).
    """
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf.train()
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    logits = hf(inputs).logits
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    )
    loss.backward()
    max_norm = optimizer.clip_grad if optimizer.clip_grad > 0 else float("inf")  # 0: no clipping
    norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), max_norm)
    groups = [
        {"params": [p for p in hf.parameters() if p.ndim > 1]},
        {"params": [p for p in hf.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if optimizer.optimizer == "sgd":  # megatron: torch SGD, momentum 0.9, coupled L2 decay
        torch_opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=optimizer.lr, momentum=0.9, weight_decay=optimizer.weight_decay
        )
    else:
        torch_opt = torch.optim.AdamW(
            groups,
            lr=optimizer.lr,
            betas=(optimizer.adam_beta1, optimizer.adam_beta2),
            eps=optimizer.adam_eps,
            weight_decay=optimizer.weight_decay,
        )
    torch_opt.step()
    weights = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    return LayoutRun(
        logits=logits.detach(), loss=float(loss), grad_norm=float(norm), weights=weights
    )
