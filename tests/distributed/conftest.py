"""Fixtures shared by the distributed tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def hf_dir_env(request, tmp_path_factory):
    """A random-weight HF directory of the test module's ``MODEL``, also exported as
    ``MT_TEST_HF_DIR`` for the spawned rank workers (they inherit the environment)."""
    from megatron_tulu.models.synthetic import make_random_hf_dir

    d = make_random_hf_dir(tmp_path_factory.mktemp("hf") / "hf", request.module.MODEL)
    os.environ["MT_TEST_HF_DIR"] = str(d)
    yield d
    os.environ.pop("MT_TEST_HF_DIR", None)
