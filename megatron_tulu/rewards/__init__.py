"""Verifiers for RLVR: ``verify(name, output, ground_truth) -> VerifierResult``.

Registered verifiers: "gsm8k" (final number), "math" (flex answer extraction, string/numeric/
symbolic equivalence with a hard time limit), "ifeval" (verifiable instruction constraints:
Google IFEval's ids and open-instruct's IF functions, the layout of Tülu 3's RLVR rows).
A verifier never raises on model output; malformed ground truth raises ``GroundTruthError``.
Each verdict carries a prose ``reason`` and a machine-readable ``code`` (an ``Outcome``).
"""

from megatron_tulu.rewards.base import (
    DEFAULT_TIMEOUT_S,
    MAX_OUTPUT_CHARS,
    GroundTruthError,
    Outcome,
    Verifier,
    VerifierResult,
    available_verifiers,
    get_verifier,
    register_verifier,
    verify,
)
from megatron_tulu.rewards.gsm8k import GSM8KVerifier
from megatron_tulu.rewards.ifeval import (
    IFEvalVerifier,
    available_constraints,
    available_if_functions,
)
from megatron_tulu.rewards.math_flex import MathVerifier
from megatron_tulu.rewards.symbolic import SymbolicChecker, default_checker

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_OUTPUT_CHARS",
    "GSM8KVerifier",
    "GroundTruthError",
    "IFEvalVerifier",
    "MathVerifier",
    "Outcome",
    "SymbolicChecker",
    "Verifier",
    "VerifierResult",
    "available_constraints",
    "available_if_functions",
    "available_verifiers",
    "default_checker",
    "get_verifier",
    "register_verifier",
    "verify",
]
