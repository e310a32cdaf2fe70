"""RLVR stage settings (Tülu 3 stage 3): the algorithm, rewards, the helper models and rollouts.

Recipe sections ``rlvr`` (:class:`RLVRConfig`) and ``value`` (:class:`ValueModelConfig`, the
helper value model of PPO); the ``rollout`` section (the vLLM engines) is
:class:`megatron_tulu.config.rollout.RolloutConfig`. The RL prompts file is ``data.train_file``
(with ``data.tokenizer``), as for SFT and DPO; without it, the embedded task's. Defaults follow
Tülu 3 (T3 §6, Table 35): reward 10 for a verified answer, -10 without EOS, gamma 1, lambda
0.95, clip 0.2, value-loss coefficient 0.1, whitened advantages, temperature 1.

One RL step: ``prompts_per_step`` prompts x ``samples_per_prompt`` samples = the rollout batch;
it is cut into ``parallel.global_batch_size``-sequence mini-batches, each one optimizer step,
and the whole batch is swept ``ppo_epochs`` times. ``training.train_steps`` counts RL steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config._validate import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_optional_str,
)

RL_ALGORITHMS = ("ppo", "grpo")
KL_ESTIMATORS = ("k1", "k3")
REFERENCE_SOURCES = ("policy", "helper")


@dataclass(kw_only=True)
class RLVRConfig:
    algorithm: str = "ppo"
    prompts_per_step: int = 8
    samples_per_prompt: int = 1  # Tülu 3 PPO: 1; GRPO (Tülu 3.1): 16
    max_prompt_tokens: int = 2048  # longer prompts are filtered out and counted
    max_response_tokens: int = 1024
    temperature: float = 1.0
    correct_reward: float = 10.0
    no_eos_penalty: float = -10.0  # replaces the reward of a response that never emits EOS
    kl_beta: float = 0.05
    # PPO: per-token KL in the reward (k1 = logp - ref); GRPO: k3 KL term in the loss.
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    value_clip: float = 0.2
    value_coef: float = 0.1
    whiten_advantages: bool = True
    ppo_epochs: int = 4
    reference: str = "policy"  # policy: a frozen copy of the initial policy; helper: see value
    reference_init: str | None = None  # helper reference: a native checkpoint root
    asynchronous: bool = False  # generate step t+1 while step t trains (one step off-policy)
    eval_file: str | None = None  # held-out prompts for verifier accuracy (default: valid.jsonl)
    eval_interval: int = 0  # evaluate every N steps (and at the end); 0: never
    eval_limit: int = 200

    def __post_init__(self) -> None:
        check_choice("algorithm", self.algorithm, RL_ALGORITHMS)
        check_int("prompts_per_step", self.prompts_per_step, minimum=1)
        check_int("samples_per_prompt", self.samples_per_prompt, minimum=1)
        check_int("max_prompt_tokens", self.max_prompt_tokens, minimum=1)
        check_int("max_response_tokens", self.max_response_tokens, minimum=1)
        self.temperature = check_float("temperature", self.temperature, gt=0.0)
        self.correct_reward = check_float("correct_reward", self.correct_reward)
        self.no_eos_penalty = check_float("no_eos_penalty", self.no_eos_penalty)
        self.kl_beta = check_float("kl_beta", self.kl_beta, ge=0.0)
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        self.gamma = check_float("gamma", self.gamma, ge=0.0, le=1.0)
        self.lam = check_float("lam", self.lam, ge=0.0, le=1.0)
        self.clip_ratio = check_float("clip_ratio", self.clip_ratio, gt=0.0)
        self.value_clip = check_float("value_clip", self.value_clip, gt=0.0)
        self.value_coef = check_float("value_coef", self.value_coef, ge=0.0)
        check_bool("whiten_advantages", self.whiten_advantages)
        check_int("ppo_epochs", self.ppo_epochs, minimum=1)
        check_choice("reference", self.reference, REFERENCE_SOURCES)
        check_optional_str("reference_init", self.reference_init)
        check_bool("asynchronous", self.asynchronous)
        check_optional_str("eval_file", self.eval_file)
        check_int("eval_interval", self.eval_interval, minimum=0)
        check_int("eval_limit", self.eval_limit, minimum=1)
        if self.algorithm == "grpo" and self.samples_per_prompt < 2:
            raise ValueError(
                f"rlvr.algorithm=grpo normalises rewards within each prompt's group, so "
                f"samples_per_prompt ({self.samples_per_prompt}) must be >= 2 (Tülu 3.1: 16)"
            )
        if self.reference == "helper" and self.reference_init is None:
            raise ValueError(
                "rlvr.reference=helper needs rlvr.reference_init (a native checkpoint of the "
                "helper-sized reference model); or use rlvr.reference=policy"
            )

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt


@dataclass(kw_only=True)
class ValueModelConfig:
    """PPO's helper value model: its own (smaller) size, a scalar head, and either the trainer's
    TP/PP/DP layout (``tp`` unset) or its own: TP ``tp``, no pipeline, data parallel over the
    other ranks. The body comes from ``init_from_native`` or ``init_from_hf`` (Tülu 3: the
    reward model; here any Llama of that size); the head starts at zero."""

    preset: str | None = None  # model preset (default: the policy's own)
    num_layers: int | None = None  # override the preset's depth (a smaller helper)
    tp: int | None = None  # own layout: TP size (PP 1, DP = world // tp); None: the trainer's
    init_from_native: str | None = None
    init_from_hf: str | None = None
    lr: float = 1e-5
    lr_warmup_ratio: float = 0.0

    def __post_init__(self) -> None:
        check_optional_str("preset", self.preset)
        if self.num_layers is not None:
            check_int("num_layers", self.num_layers, minimum=1)
        if self.tp is not None:
            check_int("tp", self.tp, minimum=1)
        check_optional_str("init_from_native", self.init_from_native)
        check_optional_str("init_from_hf", self.init_from_hf)
        self.lr = check_float("lr", self.lr, gt=0.0)
        self.lr_warmup_ratio = check_float("lr_warmup_ratio", self.lr_warmup_ratio, ge=0.0, lt=1.0)
        if self.init_from_native and self.init_from_hf:
            raise ValueError(
                f"value.init_from_native ({self.init_from_native!r}) and value.init_from_hf "
                f"({self.init_from_hf!r}) are exclusive: give one"
            )
