"""ifeval: a table of (ground truth, response, expected verdict) cases, written for this repository.

Sections: open-instruct's 25 IF functions in the layout of Tülu 3's RLVR rows (a JSON string with
every argument name, mostly null), each satisfied and violated, with open-instruct's semantics
(read from ``open_instruct/if_functions.py``); open-instruct's newer rows
(``[{"instruction_id": [...], "kwargs": [...]}]``, as JSON and as Python literal text); Google
IFEval's semantics where our old checks disagreed with it (read from Google's ``instructions.py``
as lm-eval copies it: symbol-ended forbidden words, Unicode mathematical letters and letterless
text in the case checks, capital words as nltk cuts them, sentences as punkt counts them, lines
that end at "\\n" only); the response language through langdetect. Then the places where we
deliberately differ from a reference, each with its reason. ``expected`` is the verdict's
``Outcome``; a verdict from the catch-all (``INTERNAL_ERROR``) fails whatever was expected.
"""

from __future__ import annotations

import json

import pytest

from megatron_tulu.rewards import IFEvalVerifier, Outcome, available_if_functions

MATCH, MISMATCH = Outcome.MATCH, Outcome.MISMATCH
NO_ANSWER, UNDECIDED = Outcome.NO_ANSWER, Outcome.UNDECIDED

# Every argument name open-instruct's functions take: Tülu 3's rows carry them all.
TULU_ARGUMENTS = (
    "N", "quantifier", "end_phrase", "keyword_list", "word", "forbidden_words", "letter", "i",
    "first_word", "postscript_marker", "options", "section_splitter", "original_prompt",
    "language",
)  # fmt: skip


def tulu(func_name: str, **arguments: object) -> str:
    """A Tülu 3 RLVR ``ground_truth``: JSON text naming the function, unused arguments null."""
    row: dict[str, object] = {"func_name": func_name, **dict.fromkeys(TULU_ARGUMENTS)}
    row.update(arguments)
    return json.dumps(row)


def google(ctype: str, **arguments: object) -> list[dict[str, object]]:
    return [{"type": ctype, **arguments}]


def newer(ids: list[str], kwargs: list[object]) -> str:
    """open-instruct's newer rows: a list of one dict, as Python literal text (its loader uses
    ``ast.literal_eval``)."""
    return str([{"instruction_id": ids, "kwargs": kwargs}])


FRENCH = "Bonjour, je m'appelle Marie et j'habite à Paris depuis trois ans."
ENGLISH = "Hello, my name is Marie and I have lived in Paris for three years."
JAPANESE = "これは日本語で書かれた文章です。"
GERMAN = "Das ist ein kleines Haus am See, und der Garten ist sehr schön."
WORDS_27 = " ".join(["word"] * 27)
WORDS_28 = " ".join(["word"] * 28)

# fmt: off
CASES: list[tuple[object, str, Outcome]] = [
    # -- open-instruct's IF functions (Tülu 3's RLVR rows) ---------------------------------
    (tulu("verify_keywords", keyword_list=["apple", "Pear"]), "An APPLE and a pear.", MATCH),
    (tulu("verify_keywords", keyword_list=["apple", "Pear"]), "An apple only.", MISMATCH),
    (tulu("verify_keyword_frequency", word="cat", N=2), "A cat met a Cat; cats differ.", MATCH),
    (tulu("verify_keyword_frequency", word="cat", N=2), "cat cat cat", MISMATCH),  # exactly N
    (tulu("validate_forbidden_words", forbidden_words=["bad"]), "It is good.", MATCH),
    (tulu("validate_forbidden_words", forbidden_words=["bad"]), "A BADGE.", MISMATCH),  # substring
    (tulu("verify_letter_frequency", letter="l", N=3), "hello world", MATCH),
    (tulu("verify_letter_frequency", letter="l", N=3), "HELLO WORLD", MISMATCH),  # case-sensitive
    (tulu("validate_response_language", language="fr"), FRENCH, MATCH),
    (tulu("validate_response_language", language="fr"), ENGLISH, MISMATCH),
    (tulu("verify_paragraph_count", N=3), "First.\n* * *\nSecond.\n  * * *  \nThird.", MATCH),
    (tulu("verify_paragraph_count", N=3), "* * *\nOne.\n* * *\nTwo.\n* * *\nThree.", MISMATCH),
    (tulu("verify_paragraph_count", N=3), "First.\n***\nSecond.\n***\nThird.", MISMATCH),
    (tulu("validate_word_constraint", N=3, quantifier="at least"), "one two three", MATCH),
    (tulu("validate_word_constraint", N=3, quantifier="at most"), "one two three four", MISMATCH),
    (tulu("validate_word_constraint", N=25, quantifier="around"), WORDS_27, MATCH),  # round(2.5)=2
    (tulu("validate_word_constraint", N=25, quantifier="around"), WORDS_28, MISMATCH),
    (tulu("verify_sentence_constraint", N=3, quantifier="at least"), "Hi! How are you? Fine.",
     MATCH),
    (tulu("verify_sentence_constraint", N=2, quantifier="at most"), "Mr. Li came. He sat. Bye.",
     MISMATCH),  # "Mr." does not end one
    (tulu("verify_sentence_constraint", N=1, quantifier="around"), "I am in the U.S. now. Bye.",
     MATCH),  # "U.S." does not end one: 2, within 1
    (tulu("verify_sentence_constraint", N=5, quantifier="around"), "A. B. C.", MISMATCH),
    (tulu("validate_paragraphs", N=2, i=2, first_word="Then"), "Start.\n\nThen go on.", MATCH),
    (tulu("validate_paragraphs", N=2, i=2, first_word="Then"), "Start.\n\nthen go.", MISMATCH),
    (tulu("validate_paragraphs", N=2, i=2, first_word="The"), "Start.\n\nThereby, go.", MATCH),
    (tulu("validate_paragraphs", N=2, i=2, first_word="Then"), "A.\n\n\n\nThen go.", MISMATCH),
    (tulu("verify_postscript", postscript_marker="P.S."), "Thanks.\n\nP.S. See you.", MATCH),
    (tulu("verify_postscript", postscript_marker="P.S."), "Thanks. P.S.", MISMATCH),  # no text
    (tulu("verify_postscript", postscript_marker="P.S."), "Thanks. p.s. see you", MISMATCH),
    (tulu("validate_placeholders", N=2), "Dear [name], at [address].", MATCH),
    (tulu("validate_placeholders", N=2), "Dear [name\n], at [address]", MISMATCH),
    (tulu("verify_bullet_points", N=2), "Intro\n* one\n- two", MATCH),
    (tulu("verify_bullet_points", N=2), "* one\n* two\n---", MISMATCH),  # "---" is one there
    (tulu("validate_title"), "<<My Title>>\nText", MATCH),
    (tulu("validate_title"), "<<My Title\n>>", MISMATCH),
    (tulu("validate_choice", options=["My answer is yes.", "My answer is no."]),
     "My answer is no.", MATCH),
    (tulu("validate_choice", options=["My answer is yes.", "My answer is no."]),
     "My answer is maybe.", MISMATCH),
    (tulu("validate_highlighted_sections", N=2), "*one* and *two*", MATCH),
    (tulu("validate_highlighted_sections", N=2), "**bold**", MATCH),  # "**" and "**"
    (tulu("validate_highlighted_sections", N=2), "*one* and * only", MISMATCH),
    (tulu("validate_sections", N=2, section_splitter="SECTION"),
     "SECTION 1\nfoo\nSECTION 2\nbar", MATCH),
    (tulu("validate_sections", N=2, section_splitter="SECTION"),
     "Intro\nSECTION 1\nfoo\nSECTION 2\nbar", MISMATCH),  # exactly N: the intro is one
    (tulu("validate_json_format"), '{"a": [1, 2]}', MATCH),
    (tulu("validate_json_format"), '```json\n{"a": 1}\n```', MISMATCH),  # no fences
    (tulu("validate_repeat_prompt", original_prompt="Write a poem."), "Write a poem. Roses",
     MATCH),
    (tulu("validate_repeat_prompt", original_prompt="Write a poem."), "write a poem. Roses",
     MISMATCH),
    (tulu("validate_two_responses"), "Answer A\n******\nAnswer B", MATCH),
    (tulu("validate_two_responses"), "Same\n******\nSame", MISMATCH),
    (tulu("validate_two_responses"), "A\n******\nB\n******\nC", MISMATCH),
    (tulu("validate_uppercase"), "ALL CAPS, 123!", MATCH),
    (tulu("validate_uppercase"), "ALMOST CAPs", MISMATCH),
    (tulu("validate_lowercase"), "all lower, 123!", MATCH),
    (tulu("validate_lowercase"), "Not lower", MISMATCH),
    (tulu("validate_frequency_capital_words", N=2, quantifier="at least"), "USA and UK", MATCH),
    (tulu("validate_frequency_capital_words", N=1, quantifier="at most"), "WELL-KNOWN", MISMATCH),
    (tulu("validate_frequency_capital_words", N=5, quantifier="around"), "AAA BBB CCC DDD",
     MATCH),
    (tulu("validate_frequency_capital_words", N=2, quantifier="at least"), "ÉCOLE ABC1 Abc",
     MISMATCH),
    (tulu("validate_end", end_phrase="Any other questions?"), "Done. Any other questions?\n",
     MATCH),
    (tulu("validate_end", end_phrase="Any other questions?"), "Done. any other questions?",
     MISMATCH),
    (tulu("validate_quotation"), ' "Quoted text" ', MATCH),
    (tulu("validate_quotation"), '"Unbalanced', MISMATCH),
    (tulu("validate_no_commas"), "No commas here.", MATCH),
    (tulu("validate_no_commas"), "One, two", MISMATCH),
    # open-instruct judges what follows the thinking
    (tulu("validate_no_commas"), "<think>Well, hmm, yes.</think>No commas here.", MATCH),
    (tulu("validate_lowercase"), "<|assistant|><answer>all lower</answer>", MATCH),
    (tulu("validate_lowercase"), "<think>All thinking, no answer.</think>  ", NO_ANSWER),
    (json.dumps(tulu("validate_lowercase")), "twice-encoded ground truth", MATCH),
    # -- open-instruct's newer rows: Google's ids, open-instruct's answer ---------------------
    (newer(["keywords:existence"], [{"keywords": ["sun"], "relation": None}]), "the sun", MATCH),
    (newer(["keywords:existence"], [{"keywords": ["sun"]}]), "the moon", MISMATCH),
    (newer(["keywords:existence"], [{"keywords": ["sun"]}]), "<think>sun</think>moon", MISMATCH),
    (newer(["punctuation:no_comma", "startend:quotation"], [None, {}]), '"Hi there"', MATCH),
    (newer(["punctuation:no_comma", "startend:quotation"], [None, {}]), '"Hi, there"', MISMATCH),
    (json.dumps([{"instruction_id": ["punctuation:no_comma"], "kwargs": [{}]}]), "a b", MATCH),
    ([json.dumps({"instruction_id": ["punctuation:no_comma"], "kwargs": [{}]})], "a, b", MISMATCH),
    ({"instruction_id": ["detectable_format:title"], "kwargs": [None]}, "<<T>> body", MATCH),
    # -- Google IFEval's semantics where ours differed -----------------------------------------
    (google("keywords:forbidden_words", forbidden_words=["c++"]), "I write c++ daily.", MISMATCH),
    (google("keywords:forbidden_words", forbidden_words=["c++"]), "I write Rust daily.", MATCH),
    (google("keywords:forbidden_words", forbidden_words=["c++"]), "I use c++11.", MISMATCH),
    (google("keywords:forbidden_words", forbidden_words=["very"]), "everything is fine", MATCH),
    (google("change_case:english_lowercase"), "this is 𝐀 sentence in english", MISMATCH),
    (google("change_case:english_capital"), "THIS IS 𝐚 SENTENCE IN ENGLISH", MISMATCH),
    (google("change_case:english_lowercase"), "123 456 !!!", MISMATCH),  # no letters
    (google("change_case:english_capital"), "123 456 !!!", MISMATCH),
    (google("change_case:english_lowercase"), "c'est une phrase écrite en français", MISMATCH),
    (google("change_case:english_lowercase"), "this is an english sentence in lowercase", MATCH),
    (google("change_case:english_capital"), "THIS IS AN ENGLISH SENTENCE IN CAPITALS", MATCH),
    (google("change_case:capital_word_frequency", capital_frequency=2,
            capital_relation="less than"), "It is WELL-KNOWN.", MATCH),
    (google("change_case:capital_word_frequency", capital_frequency=2,
            capital_relation="less than"), "The U.S.A. is big.", MATCH),
    (google("change_case:capital_word_frequency", capital_frequency=3,
            capital_relation="at least"), "DON'T STOP.", MATCH),  # nltk: DO, N'T, STOP
    (google("change_case:capital_word_frequency", capital_frequency=2,
            capital_relation="at least"), "I saw NASA.", MATCH),
    (google("length_constraints:number_sentences", relation="at least", num_sentences=2),
     'She said "Stop." Then she left.', MATCH),
    (google("length_constraints:number_sentences", relation="less than", num_sentences=2),
     "Well... maybe not.", MATCH),
    (google("length_constraints:number_sentences", relation="at least", num_sentences=2),
     "Wait... What happened?", MATCH),
    (google("length_constraints:number_sentences", relation="less than", num_sentences=3),
     "Mr. Smith arrived. He sat down.", MATCH),
    (google("length_constraints:number_sentences", relation="less than", num_sentences=2),
     "J. R. Tolkien wrote it (in 1954.) Then more.", MISMATCH),
    (google("length_constraints:number_sentences", relation="less than", num_sentences=2),
     "Line one\nline two without an end mark", MATCH),
    (google("length_constraints:number_sentences", relation="at least", num_sentences=2),
     "So do I. Then we go.", MATCH),  # "I." is no initial
    (google("detectable_format:number_bullet_lists", num_bullets=2),
     "* one\u2028* two\n* three", MATCH),
    (google("detectable_format:number_bullet_lists", num_bullets=3),
     "* one\u2028* two\n* three", MISMATCH),
    # -- the response language (langdetect, seeded) ---------------------------------------------
    (google("language:response_language", language="de"), GERMAN, MATCH),
    (google("language:response_language", language="de"), ENGLISH, MISMATCH),
    (google("language:response_language", language="en"), ENGLISH, MATCH),
    (google("language:response_language", language="ja"), JAPANESE, MATCH),
    (google("language:response_language", language="en"), "12345 !!!", UNDECIDED),
    (google("language:response_language", language="en"), "Hi", UNDECIDED),  # 2 letters
    (google("language:response_language", language="en"), "𝐡𝐞𝐥𝐥𝐨 𝐰𝐨𝐫𝐥𝐝", UNDECIDED),  # no feature
    (tulu("validate_response_language", language="en"), "... 42 ...", UNDECIDED),
    (google("language:response_language", language="de") + google("punctuation:no_comma"),
     "12345, 678", MISMATCH),  # a definite failure outranks an undecided one
]

# -- where we deliberately differ from a reference, and why -------------------------------------
# (ground truth, response, expected, the reference's verdict, why ours is the better reward)
CHOICES: list[tuple[object, str, Outcome, str, str]] = [
    (tulu("validate_lowercase"), "123 !!!", MISMATCH, "open-instruct: satisfied",
     "a text without letters is not written in lowercase letters"),
    (tulu("validate_lowercase"), "𝐇𝐄𝐋𝐋𝐎 world", MISMATCH, "open-instruct: satisfied",
     "mathematical capitals are capital letters that str.lower() leaves alone"),
    (tulu("validate_uppercase"), "𝐡𝐞𝐥𝐥𝐨 WORLD", MISMATCH, "open-instruct: satisfied",
     "mathematical small letters are lowercase letters that str.upper() leaves alone"),
    (tulu("validate_no_commas"), "one，two", MISMATCH, "open-instruct: satisfied",
     "a fullwidth comma is a comma"),
    (tulu("validate_forbidden_words", forbidden_words=["apple"]), "I like аpple pie",
     MISMATCH, "open-instruct: satisfied", "a Cyrillic а must not hide a forbidden word"),
    (tulu("validate_two_responses"), "Answer A\n******", MISMATCH, "open-instruct: satisfied",
     "an empty second response is not a second response"),
    (tulu("validate_quotation"), '"', MISMATCH, "open-instruct: satisfied",
     "a lone quotation mark wraps no response"),
    (tulu("validate_choice", options="('My answer is yes.', 'My answer is no.')"),
     "Maybe, who knows.", MISMATCH, "open-instruct: satisfied (each character an option)",
     "the string spells a list of options; its characters are not options"),
    (tulu("validate_response_language", language="en"), "12345", UNDECIDED,
     "open-instruct: langdetect raises", "no language can be told from digits"),
    (tulu("validate_lowercase"), "   ", NO_ANSWER, "open-instruct: satisfied",
     "an empty response follows no instruction"),
    (google("language:response_language", language="en"), "12345", UNDECIDED,
     "Google: followed (langdetect's error counts as followed)",
     "digits are in no language; rewarding them would reward not answering"),
    (google("change_case:english_lowercase"), "𝐚𝐛𝐜𝐝 𝐞𝐟𝐠𝐡", UNDECIDED,
     "Google: followed (langdetect's error counts as followed)",
     "mathematical letters are not English text"),
    (google("keywords:forbidden_words", forbidden_words=["c++"]), "The letter c is fine.",
     MATCH, "Google: forbidden (its unescaped pattern 'c++' matches a lone 'c')",
     "the forbidden word is 'c++', not 'c'"),
    (google("detectable_format:number_bullet_lists", num_bullets=0), "-5 degrees\n*italic*",
     MATCH, "Google: 2 bullets", "'-5' and '*italic*' are not bullet points"),
    (google("punctuation:no_comma"), " \n\t", NO_ANSWER, "Google: followed",
     "an empty response follows no instruction"),
]
# fmt: on


def _ids(cases: list) -> list[str]:
    return [f"{i:03d}-{case[2]}" for i, case in enumerate(cases)]


@pytest.fixture(scope="module")
def strict() -> IFEvalVerifier:
    return IFEvalVerifier()


@pytest.mark.parametrize(("truth", "response", "expected"), CASES, ids=_ids(CASES))
def test_ifeval_case(strict, truth, response, expected):
    result = strict(response, truth)
    assert result.code is not Outcome.INTERNAL_ERROR, result
    assert result.code is expected, result
    assert result.correct == (expected is Outcome.MATCH)
    assert (result.score == 1.0) == (expected is Outcome.MATCH)


@pytest.mark.parametrize(
    ("truth", "response", "expected", "reference", "why"), CHOICES, ids=_ids(CHOICES)
)
def test_ifeval_deliberate_difference(strict, truth, response, expected, reference, why):
    result = strict(response, truth)
    assert result.code is expected, f"{why} (the reference: {reference}); got {result}"


def test_every_open_instruct_function_is_satisfied_and_violated():
    verdicts: dict[str, set[Outcome]] = {}
    for truth, _, expected in CASES:
        if isinstance(truth, str) and truth.startswith('{"func_name"'):
            verdicts.setdefault(json.loads(truth)["func_name"], set()).add(expected)
    assert set(verdicts) == set(available_if_functions())
    assert len(available_if_functions()) == 25
    assert all({MATCH, MISMATCH} <= outcomes for outcomes in verdicts.values()), verdicts


def test_cases_are_distinct():
    keys = [(repr(truth), response) for truth, response, *_ in CASES + CHOICES]
    assert len(keys) == len(set(keys))
