"""RL prompt rows: rendered prompts, verifier by dataset, too-long prompts filtered and counted,
a row without ground truth is an error naming file and line, bad rows per data.bad_rows."""

from __future__ import annotations

import json

import pytest

from megatron_tulu.data.chat_templates import get_chat_template
from megatron_tulu.data.rows import BadRowError
from megatron_tulu.data.tokenizers import load_tokenizer
from megatron_tulu.stages.rlvr.prompts import TOO_LONG, read_rl_prompts
from megatron_tulu.stages.rlvr.stage import prompt_stream, step_prompts


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from megatron_tulu.data.build_task import TaskConfig, build_task

    task = tmp_path_factory.mktemp("task")
    build_task(task, TaskConfig(seed=0, num_sft_train=200, num_pref_train=4, num_rl_train=4,
                                num_eval=4))  # fmt: skip
    return get_chat_template("tulu", load_tokenizer(task / "tokenizer"))


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _user(text):
    return [{"role": "user", "content": text}]


def test_prompts_filters_and_verifiers(tmp_path, template):
    rows = [
        {"messages": _user("Tom has 3 apples. How many?"), "ground_truth": "3", "dataset": "arith"},
        {"messages": _user("x " * 400), "ground_truth": "1", "dataset": "gsm8k"},
        {"messages": _user("Solve"), "ground_truth": "\\frac12", "dataset": "MATH"},
        "{not json",
        {"messages": [{"role": "robot", "content": "hi"}], "ground_truth": "1", "dataset": "math"},
    ]
    prompts, report = read_rl_prompts(_write(tmp_path / "p.jsonl", rows), template,
                                      max_prompt_tokens=64)  # fmt: skip
    assert [p.verifier for p in prompts] == ["gsm8k", "math"]
    assert [p.line for p in prompts] == [1, 3]
    assert prompts[0].prompt_ids == template.render_prompt(rows[0]["messages"])
    assert report.num_bad[TOO_LONG] == 1 and report.num_rows_skipped == 3
    assert "p.jsonl:2" in report.summary()
    with pytest.raises(BadRowError, match=r"p\.jsonl:4"):
        read_rl_prompts(tmp_path / "p.jsonl", template, max_prompt_tokens=64, bad_rows="fail")


def test_row_without_ground_truth_names_the_row(tmp_path, template):
    rows = [{"messages": _user("a"), "ground_truth": "1", "dataset": "arith"},
            {"messages": _user("b"), "dataset": "arith"}]  # fmt: skip
    with pytest.raises(ValueError, match=r"q\.jsonl:2: RL prompt row has no 'ground_truth'"):
        read_rl_prompts(_write(tmp_path / "q.jsonl", rows), template, max_prompt_tokens=64)
    rows[1] = {"messages": _user("b"), "ground_truth": "1", "dataset": "poetry"}
    with pytest.raises(ValueError, match=r"q\.jsonl:2: no verifier.*'poetry'"):
        read_rl_prompts(_write(tmp_path / "q.jsonl", rows), template, max_prompt_tokens=64)


def test_step_prompts_depend_on_the_step_only():
    items = list(range(10))
    a = [step_prompts(items, prompt_stream(10, 4, seed=1), s) for s in (1, 2, 3)]
    fresh = prompt_stream(10, 4, seed=1)  # a new stream (a resumed run) gives the same steps
    assert a == [step_prompts(items, fresh, s) for s in (3, 2, 1)][::-1]
    assert sorted(a[0] + a[1] + a[2][:2]) == items  # one pass covers every prompt once
    assert a[0] != step_prompts(items, prompt_stream(10, 4, seed=2), 1)
    # the stream is the sampler every stage reads: the same order as SFT's for the same seed
    from megatron_tulu.data.sampler import ShardedSampler

    same = ShardedSampler(num_samples=10, global_batch_size=4, seed=1)
    assert a[1] == [items[i] for i in same.global_batch(4)]


def test_verifier_lists_and_ifeval_old(tmp_path, template):
    """open-instruct's rows: ``dataset`` as a list of one (ground truth a list of one beside it)
    and the ``ifeval_old`` name of its func_name verifier; a row naming two verifiers is an
    error naming the row (one verifier scores a row here)."""
    from megatron_tulu.rewards import verify

    lower = {"func_name": "validate_lowercase", "N": None}
    rows = [
        {"messages": _user("How many?"), "ground_truth": ["12"], "dataset": ["gsm8k"]},
        {"messages": _user("Answer in lowercase."), "ground_truth": json.dumps(lower),
         "dataset": "ifeval_old"},
        {"messages": _user("Lowercase."), "ground_truth": [json.dumps(lower)],
         "dataset": ["ifeval_old"]},
    ]  # fmt: skip
    prompts, _ = read_rl_prompts(_write(tmp_path / "l.jsonl", rows), template,
                                 max_prompt_tokens=64)  # fmt: skip
    assert [(p.verifier, p.dataset) for p in prompts] == [
        ("gsm8k", "gsm8k"), ("ifeval", "ifeval_old"), ("ifeval", "ifeval_old"),
    ]  # fmt: skip
    assert prompts[0].ground_truth == "12"
    assert verify("gsm8k", "so #### 12", prompts[0].ground_truth).correct
    for p in prompts[1:]:
        assert verify("ifeval", "all lowercase here.", p.ground_truth).correct
        assert not verify("ifeval", "Not lowercase.", p.ground_truth).correct
    rows.append({"messages": _user("b"), "ground_truth": ["1", "2"], "dataset": ["gsm8k", "math"]})
    with pytest.raises(ValueError, match=r"l\.jsonl:4: 'dataset' names 2 verifiers"):
        read_rl_prompts(_write(tmp_path / "l.jsonl", rows), template, max_prompt_tokens=64)
