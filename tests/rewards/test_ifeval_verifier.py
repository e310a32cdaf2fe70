"""ifeval: every Google constraint type, satisfied and violated; spec formats; score and loose
mode. (open-instruct's functions, the newer layouts and the Google-semantics cases are in
test_ifeval_cases.py; malformed ground truth of every layout in test_ifeval_layouts.py.)"""

from __future__ import annotations

import json

import pytest

from megatron_tulu.rewards import IFEvalVerifier, available_constraints, verify

# (type, kwargs, a response that satisfies it, one that does not)
CASES = [
    (
        "length_constraints:number_words",
        {"relation": "at least", "num_words": 5},
        "one two three four five",
        "one two three four",
    ),
    (
        "length_constraints:number_words",
        {"relation": "less than", "num_words": 3},
        "short answer",
        "this is too long",
    ),
    (
        "length_constraints:number_sentences",
        {"relation": "at least", "num_sentences": 3},
        "One. Two! Three?",
        "One. Two.",
    ),
    (
        "length_constraints:number_sentences",
        {"relation": "less than", "num_sentences": 2},
        "Just one sentence.",
        "One. Two.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 3},
        "First.\n***\nSecond.\n***\nThird.",
        "First.\n***\nSecond.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "***\nFirst.\n***\nSecond.\n***",
        "First.\n***\n***\nSecond.",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
        'Start here.\n\n"Then, go on.',
        "Start here.\n\nAfter that.",
    ),
    (
        "keywords:existence",
        {"keywords": ["apple", "Pear"]},
        "An Apple and a pear.",
        "An apple only.",
    ),
    (
        "keywords:frequency",
        {"keyword": "cat", "frequency": 2, "relation": "at least"},
        "Cat and cat.",
        "One cat.",
    ),
    (
        "keywords:frequency",
        {"keyword": "cat", "frequency": 2, "relation": "less than"},
        "One cat.",
        "cat cat",
    ),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["very", "really"]},
        "It is everything good.",
        "It is Very good.",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
        "Zig zag",
        "zig",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "e", "let_frequency": 2, "let_relation": "less than"},
        "hello",
        "eerie",
    ),
    (
        "language:response_language",
        {"language": "es"},
        "Hola, me llamo Marta y vivo en Madrid con mi familia.",
        "Hello, my name is Marta and I live in Madrid with my family.",
    ),
    ("change_case:english_lowercase", {}, "all lower, 123!", "Not lower"),
    ("change_case:english_capital", {}, "ALL UPPER, 123!", "ALMOST UPPEr"),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "USA and UK",
        "USA and Uk",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "NASA only",
        "NASA ESA",
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ("detectable_format:json_format", {}, ' [1, "x", null] ', "Here: [1]"),
    ("startend:quotation", {}, ' "quoted" ', '"unbalanced'),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "*one* and **two**",
        "*one* and * *",
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nfoo\nSECTION 2\nbar",
        "SECTION 1\nfoo\nsection 2",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "Hi.\n\nP.S. see you",
        "Hi. PS see you",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.P.S"},
        "Hi.\nP.P.S later",
        "Hi.\nP.S. later",
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], at [address]",
        "Dear [name], at [address\n]",
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        "Done. any other questions?  ",
        "Any other questions? Bye.",
    ),
    (
        "startend:start_checker",
        {"start_phrase": "My answer"},
        '"My answer is here"',
        "Well, my answer",
    ),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 2},
        "Intro\n* one\n  - two\n**bold**",
        "* one\n* two\n* three",
    ),
    ("detectable_format:number_bullet_lists", {"num_bullets": 0}, "-5 degrees\n*italic*", "- one"),
    ("detectable_format:title", {}, "<<My Title>>\ntext", "<<  >> and <<no\nclose>>"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "My answer: yes"),
    ("punctuation:no_comma", {}, "No commas here.", "One, two"),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a poem."},
        "write a poem. Roses are red.",
        "Here is a poem.",
    ),
    ("combination:two_responses", {}, "Answer A\n******\nAnswer B", "Same\n******\nSame"),
    ("combination:two_responses", {}, "A\n******\nB\n******", "A\n******\n******\nB"),
]


@pytest.mark.parametrize(("ctype", "kwargs", "good", "bad"), CASES)
def test_each_constraint(ctype, kwargs, good, bad):
    spec = [{"type": ctype, **kwargs}]
    ok = verify("ifeval", good, spec)
    assert ok.correct and ok.score == 1.0, ok
    wrong = verify("ifeval", bad, spec)
    assert not wrong.correct and wrong.score == 0.0, wrong
    assert wrong.reason == f"failed: {ctype}"


def test_every_constraint_type_is_tested():
    assert {case[0] for case in CASES} == set(available_constraints())


def test_all_must_hold_and_score_is_the_fraction():
    spec = [
        {"type": "punctuation:no_comma"},
        {"type": "change_case:english_lowercase"},
        {"type": "keywords:existence", "keywords": ["banana"]},
        {"type": "length_constraints:number_words", "relation": "at least", "num_words": 3},
    ]
    # english_lowercase also asks langdetect for English: a sentence, not two words
    result = verify("ifeval", "i like to eat bananas for breakfast every morning", spec)
    assert result.correct and result.score == 1.0 and result.reason == "all constraints satisfied"
    result = verify("ifeval", "I like to eat bananas, yes", spec)
    assert not result.correct and result.score == 0.5
    assert result.reason == "failed: punctuation:no_comma, change_case:english_lowercase"
    assert result.extracted is None


def test_google_format_json_string_and_null_arguments():
    google = {
        "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
        "kwargs": [{"keywords": None, "num_words": None}, {"keywords": ["sun"], "relation": None}],
    }
    assert verify("ifeval", "the sun", google).correct
    assert verify("ifeval", "the sun", json.dumps(google)).correct
    assert not verify("ifeval", "the moon", json.dumps(google)).correct
    assert verify("ifeval", "no comma", {"type": "punctuation:no_comma"}).correct


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([{"type": "keywords:existence"}], r"missing \['keywords'\]"),
        ([{"type": "punctuation:no_comma", "extra": 1}], r"unexpected \['extra'\]"),
        (
            [{"type": "length_constraints:number_words", "relation": "more than", "num_words": 3}],
            "relation='more than' must be one of",
        ),
        (
            [{"type": "length_constraints:number_words", "relation": "at least", "num_words": -1}],
            "num_words=-1 must be an integer >= 0",
        ),
        ([{"type": "keywords:existence", "keywords": "apple"}], "non-empty list of strings"),
        (
            [
                {
                    "type": "keywords:letter_frequency",
                    "letter": "ab",
                    "let_frequency": 1,
                    "let_relation": "at least",
                }
            ],
            "single letter",
        ),
        ([{"type": "no_such_check"}], "unknown type 'no_such_check'; known types: change_case"),
        (["punctuation:no_comma"], "must be a dict"),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": []}, "list of 1 dicts"),
    ],
)
def test_malformed_specs_raise(spec, match):
    with pytest.raises(ValueError, match=match):
        verify("ifeval", "x", spec)


def test_loose_mode_drops_first_or_last_line_and_asterisks():
    spec = [{"type": "startend:end_checker", "end_phrase": "bye"}, {"type": "punctuation:no_comma"}]
    text = "Sure, here it is:\nok bye\nHope this helps!"
    assert not IFEvalVerifier()(text, spec).correct
    assert IFEvalVerifier(loose=True)(text, spec).correct
    assert IFEvalVerifier(loose=True)(
        "**bye**", [{"type": "startend:end_checker", "end_phrase": "bye"}]
    ).correct
    assert not IFEvalVerifier(loose=True)("bye, bye", spec).correct
