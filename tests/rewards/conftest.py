"""Shared fixtures of the verifier tests."""

from __future__ import annotations

import pytest

from megatron_tulu.rewards import MathVerifier, default_checker


@pytest.fixture(scope="module")
def patient_math() -> MathVerifier:
    """The default checker with a long limit: these tests judge verdicts, not speed (2 shared
    cores may be busy); the time bounds are tested in test_verifier_hostile.py."""
    assert default_checker().warm_up()
    return MathVerifier(timeout_s=20.0)
