"""Chat templates: exact assistant-token accounting, prompts, and equivalence with transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import GENERAL_TEXT, conversation

from megatron_tulu.data.chat_templates import (
    chat_template_names,
    get_chat_template,
    jinja_template,
)
from megatron_tulu.data.tokenizers import HFTokenizer, SentencePieceTokenizer
from megatron_tulu.data.train_tokenizer import BPETokenizerConfig, train_bpe_tokenizer

Q1, A1 = "What is 2+3?", "2 + 3 = 5\n#### 5"
Q2, A2 = "And times 4?", "5 * 4 = 20\n#### 20"
TWO_TURNS = conversation(("user", Q1), ("assistant", A1), ("user", Q2), ("assistant", A2))

EXPECTED_TEXT = {
    "tulu": (
        "<|begin_of_text|><|user|>\nWhat is 2+3?\n<|assistant|>\n2 + 3 = 5\n#### 5<|end_of_text|>"
        "\n<|user|>\nAnd times 4?\n<|assistant|>\n5 * 4 = 20\n#### 20<|end_of_text|>"
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n2 + 3 = 5\n#### 5<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd times 4?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n5 * 4 = 20\n#### 20<|eot_id|>"
    ),
}
END_TOKEN = {"tulu": "<|end_of_text|>", "llama3": "<|eot_id|>"}


def test_registry_has_both_templates() -> None:
    assert {"llama3", "tulu"} <= set(chat_template_names())


@pytest.mark.parametrize("name", ["tulu", "llama3"])
def test_only_assistant_tokens_are_masked_exactly(name: str, hf_tokenizer: HFTokenizer) -> None:
    template = get_chat_template(name, hf_tokenizer)
    ids, mask = template.render(TWO_TURNS)
    assert len(ids) == len(mask)
    assert hf_tokenizer.decode(ids) == EXPECTED_TEXT[name]
    end_id = hf_tokenizer.token_to_id(END_TOKEN[name])
    # by hand: each response's own tokens plus its one end token, nothing else
    expected_count = len(hf_tokenizer.encode(A1)) + len(hf_tokenizer.encode(A2)) + 2
    assert sum(mask) == expected_count
    masked = [i for i, m in zip(ids, mask, strict=True) if m]
    assert masked == [*hf_tokenizer.encode(A1), end_id, *hf_tokenizer.encode(A2), end_id]
    # and the masked tokens form two contiguous runs that end at the two end tokens
    runs = [i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1])]
    assert len(runs) == 2
    unmasked_text = hf_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "2 + 3" not in unmasked_text and Q1 in unmasked_text and "assistant" in unmasked_text


@pytest.mark.parametrize("name", ["tulu", "llama3"])
def test_system_turn_carries_no_loss(name: str, hf_tokenizer: HFTokenizer) -> None:
    template = get_chat_template(name, hf_tokenizer)
    with_system = [{"role": "system", "content": "Be brief."}, *TWO_TURNS]
    assert template.render(with_system).num_assistant_tokens == (
        template.render(TWO_TURNS).num_assistant_tokens
    )


@pytest.mark.parametrize("name", ["tulu", "llama3"])
def test_prompt_is_a_prefix_of_the_conversation(name: str, hf_tokenizer: HFTokenizer) -> None:
    template = get_chat_template(name, hf_tokenizer)
    full = template.render(TWO_TURNS)
    prompt = template.render_prompt(TWO_TURNS[:-1])
    assert full.input_ids[: len(prompt)] == prompt
    # everything after the prompt is the last response, all of it trained on
    assert all(full.assistant_mask[len(prompt) :])
    assert not any(full.assistant_mask[len(prompt) - 3 : len(prompt)])
    header = {
        "tulu": "<|assistant|>\n",
        "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    }
    assert hf_tokenizer.decode(prompt).endswith(header[name])
    bare = template.render_prompt(TWO_TURNS[:-1], add_generation_prompt=False)
    assert not hf_tokenizer.decode(bare).endswith(header[name])
    assert prompt[: len(bare)] == bare


def test_add_bos_false_drops_only_the_bos(hf_tokenizer: HFTokenizer) -> None:
    with_bos = get_chat_template("tulu", hf_tokenizer).render(TWO_TURNS)
    without = get_chat_template("tulu", hf_tokenizer, add_bos=False).render(TWO_TURNS)
    assert with_bos.input_ids == [hf_tokenizer.bos_id, *without.input_ids]


def test_missing_special_token_is_named(tmp_path: Path) -> None:
    config = BPETokenizerConfig(
        vocab_size=300,
        special_tokens=("<s>", "</s>", "<pad>"),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tok = train_bpe_tokenizer(GENERAL_TEXT, tmp_path, config)
    with pytest.raises(ValueError, match=r"'llama3'.*<\|start_header_id\|>"):
        get_chat_template("llama3", tok)
    with pytest.raises(ValueError, match=r"'tulu'.*<\|system\|>"):
        get_chat_template("tulu", tok)


def test_unknown_template_and_bad_messages(hf_tokenizer: HFTokenizer) -> None:
    with pytest.raises(ValueError, match=r"'chatml'.*llama3"):
        get_chat_template("chatml", hf_tokenizer)
    template = get_chat_template("tulu", hf_tokenizer)
    with pytest.raises(ValueError, match="'tool'"):
        template.render(conversation(("user", "hi"), ("tool", "x")))
    with pytest.raises(ValueError, match="content must be a string"):
        template.render([{"role": "user", "content": None}])


def test_templates_work_with_sentencepiece(spm_tokenizer: SentencePieceTokenizer) -> None:
    template = get_chat_template("tulu", spm_tokenizer)
    ids, mask = template.render(conversation(("user", "Paris?"), ("assistant", "Paris.")))
    masked = [i for i, m in zip(ids, mask, strict=True) if m]
    assert masked == [*spm_tokenizer.encode("Paris."), spm_tokenizer.eos_id]
    assert ids[:2] == [spm_tokenizer.bos_id, spm_tokenizer.token_to_id("<|user|>")]


MULTI_TURN = conversation(
    ("system", "You are a careful tutor."),
    ("user", "Tom has 3 apples and buys 5 more. How many apples does Tom have?"),
    ("assistant", "3 + 5 = 8\n#### 8"),
    ("user", "He gives 2 away. How many now?"),
    ("assistant", "It's 8 - 2 = 6, so 6 apples.\n#### 6"),
)


@pytest.mark.parametrize("add_bos", [True, False])
@pytest.mark.parametrize("name", ["tulu", "llama3"])
def test_jinja_template_matches_transformers(
    name: str, add_bos: bool, hf_tokenizer: HFTokenizer
) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=hf_tokenizer.backend,
        chat_template=jinja_template(name, add_bos=add_bos),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
    )
    ours = get_chat_template(name, hf_tokenizer, add_bos=add_bos)
    out = hf.apply_chat_template(
        MULTI_TURN, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = ours.render(MULTI_TURN)
    assert list(out["input_ids"]) == ids
    assert list(out["assistant_masks"]) == [int(m) for m in mask]
    for turns in (MULTI_TURN[:2], MULTI_TURN[:4]):
        prompt = hf.apply_chat_template(
            turns, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert list(prompt) == ours.render_prompt(turns)
    text = hf.apply_chat_template(MULTI_TURN, tokenize=False)
    assert text == ours.render_text(MULTI_TURN)


def test_task_tokenizer_carries_the_jinja_template(task_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(task_dir / "tokenizer"))
    ours = get_chat_template("tulu", HFTokenizer(task_dir / "tokenizer"))
    ids = hf.apply_chat_template(MULTI_TURN, tokenize=True, return_dict=False)
    assert list(ids) == ours.render(MULTI_TURN).input_ids
