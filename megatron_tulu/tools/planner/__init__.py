"""Memory and step-time planner for megatron layouts and RLVR steps (pure Python, no torch).

Entry points: :func:`plan_training`, :func:`plan_rlvr`, :func:`search_training`,
:func:`search_rlvr`; the CLI is ``tools/plan.py`` (:mod:`megatron_tulu.tools.planner.cli`).
"""

from megatron_tulu.tools.planner.fit import DoesNotFit
from megatron_tulu.tools.planner.hardware import HARDWARE, HardwareProfile, get_hardware
from megatron_tulu.tools.planner.layout import PlanError, TrainLayout, resolve
from megatron_tulu.tools.planner.rlvr import RLVRPlan, RLVRSettings, plan_rlvr
from megatron_tulu.tools.planner.rollout import RolloutWorkload, engines_on
from megatron_tulu.tools.planner.search import SearchSpace, search_rlvr, search_training
from megatron_tulu.tools.planner.training_plan import TrainingPlan, plan_training

__all__ = [
    "HARDWARE",
    "DoesNotFit",
    "HardwareProfile",
    "PlanError",
    "RLVRPlan",
    "RLVRSettings",
    "RolloutWorkload",
    "SearchSpace",
    "TrainLayout",
    "TrainingPlan",
    "engines_on",
    "get_hardware",
    "plan_rlvr",
    "plan_training",
    "resolve",
    "search_rlvr",
    "search_training",
]
