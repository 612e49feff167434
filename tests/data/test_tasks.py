"""Tasks: answer extraction (hand-written and real PaLM outputs), labels, prompt formats."""

from __future__ import annotations

import itertools

import pytest

from fedcot.data import (
    TASK_NAMES,
    Example,
    MathTask,
    MultipleChoiceTask,
    NLITask,
    YesNoTask,
    evaluate_expression,
    format_number,
    get_task,
    load_dss,
)
from fedcot.errors import ConfigError, DataError

BEAVER = Example(
    id="q1",
    question="A beaver is know for building prowess, their supplies come from where?",
    label="wooded area",
    choices=["british columbia", "body of water", "wooded area", "pay debts", "zoo"],
    rationale="Beavers build with wood, which grows in wooded areas.",
)
MATH = Example(id="m1", question="10 seeds in each of 45 beds. How many seeds?", label="450")
NLI = Example(id="n1", question="A man sleeps.", label="neutral", premise="A man lies in bed.")
RTE = Example(id="r1", question="A man sleeps.", label="not_entailment", premise="A man runs.")
YN = Example(id="y1", question="Is the sky blue?", label="yes")


# ---- real rows: the PaLM rationale's parsed label agrees with gold as documented ---------

# (dataset, split, documented agreement in shared/datasets PROVENANCE.md)
DOCUMENTED = [
    ("cqa", "test", 0.772),
    ("svamp", "test", 0.775),
    ("svamp", "train", 0.744),
    ("esnli", "test", 0.730),
    ("anli1", "test", 0.656),
]


@pytest.mark.parametrize(("name", "split", "documented"), DOCUMENTED)
def test_palm_rationale_labels_agree_with_gold_as_documented(
    shared_datasets, name, split, documented
):
    examples = load_dss(shared_datasets, name, split)
    assert len(examples) >= 200
    task = get_task(name)
    agree = sum(task.is_correct(ex.rationale_label, ex) for ex in examples) / len(examples)
    # Our parser is a little stricter/looser than DSS's (letters, hedges), hence the margin.
    assert abs(agree - documented) < 0.03, f"{name} {split}: {agree:.3f} vs {documented}"
    parsed = sum(ex.rationale_label is not None for ex in examples) / len(examples)
    assert parsed > 0.95


def test_shifted_rows_would_not_agree(shared_datasets):
    # Alignment check: pairing each rationale with the next example's gold is near chance.
    examples = load_dss(shared_datasets, "cqa", "test")
    task = get_task("cqa")
    shifted = sum(
        a.rationale_label is not None
        and task.is_correct(a.rationale_label, b)
        and a.rationale_label in b.choices
        for a, b in itertools.pairwise(examples)
    ) / (len(examples) - 1)
    assert shifted < 0.1


# ---- hand-written model outputs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(c)", "wooded area"),
        ("c)", "wooded area"),
        ("C", "wooded area"),
        ("c. wooded area", "wooded area"),
        ("The answer is (c) wooded area.", "wooded area"),
        ("So the answer is (C) Wooded Area.\n\nQ: next question (a)", "wooded area"),
        ("answer: C", "wooded area"),
        ("Answer: (b)", "body of water"),
        ("Option E", "zoo"),
        ("wooded area", "wooded area"),
        ("I think it is a wooded area, obviously.", "wooded area"),
        ("The answer is a body of water.", "body of water"),
        ("The answer is not (a) but (c).", "wooded area"),
        ("Beavers need wood. They find it in (c).", "wooded area"),
        ("So the answer is either (c) or (d).", None),
        ("(c) or (d)", None),
        ("The answer is (f).", None),
        ("I don't know", None),
        ("", None),
    ],
)
def test_multiple_choice_extraction(text, expected):
    assert get_task("cqa").extract_answer(text, BEAVER) == expected


def test_multiple_choice_prefers_the_longest_choice_text():
    ex = Example("x", "Where is the bed?", "river bed", ["bed", "river bed", "sea", "car", "hat"])
    assert get_task("cqa").extract_answer("It lies in the river bed", ex) == "river bed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("450", "450"),
        ("The answer is (10 * 45).", "450"),
        ("The answer is 1,250 dollars.", "1250"),
        ("$3.50", "3.5"),
        ("The answer is -7.", "-7"),
        ("The answer is −3", "-3"),
        ("answer: 10 - (3 + 6) = 1", "1"),
        ("He had 12 apples and ate 5, so 7 remain.", "7"),
        ("Steps...\n#### 72", "72"),
        ("The answer is $1,560.", "1560"),
        ("The final answer is 2.5", "2.5"),
        ("So the answer is (10 / 4).\n\nQ: The answer is 9", "2.5"),
        ("We get 10/4 = 2.5 apples", "2.5"),
        ("The answer is approximately 12 apples", "12"),
        ("-12", "-12"),
        ("(3 + 4) * 2", "14"),
        ("no number here", None),
        ("The answer is (10 / 0).", None),
    ],
)
def test_math_extraction(text, expected):
    assert get_task("svamp").extract_answer(text, MATH) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("neutral", "neutral"),
        ("Entailment.", "entailment"),
        ("The answer is contradiction.", "contradiction"),
        ("So the answer is neutral.\n\nPremise: x\nAnswer: entailment", "neutral"),
        ("yes", "entailment"),
        ("No, it does not follow.", "contradiction"),
        ("Maybe", "neutral"),
        ("It is not possible to tell", "neutral"),
        ("There is no indication of that.\nAnswer: neutral", "neutral"),
        ("The premise entails the hypothesis.", "entailment"),
        ("The statements are contradictory", "contradiction"),
        ("banana", None),
    ],
)
def test_nli_3way_extraction(text, expected):
    assert get_task("esnli").extract_answer(text, NLI) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not_entailment", "not_entailment"),
        ("not entailment", "not_entailment"),
        ("entailment", "entailment"),
        ("No", "not_entailment"),
        ("Yes.", "entailment"),
        ("The premise does not entail the hypothesis.", "not_entailment"),
        ("The answer is not entailed.", "not_entailment"),
        ("Answer: non-entailment", "not_entailment"),
        ("neutral", "not_entailment"),
    ],
)
def test_nli_2way_extraction(text, expected):
    assert get_task("rte").extract_answer(text, RTE) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Yes", "yes"), ("no.", "no"), ("The answer is yes.", "yes"), ("True", "yes"), ("?", None)],
)
def test_yes_no_extraction(text, expected):
    assert get_task("yes-no").extract_answer(text, YN) == expected


# ---- numbers and labels ------------------------------------------------------------------


def test_expression_evaluation_and_formatting():
    assert evaluate_expression("( 10.0 * 45.0 )") == 450
    assert evaluate_expression("( 10.0 - ( 6.0 + 3.0 ) )") == 1
    assert evaluate_expression("-(2 + 3) * 2") == -10
    assert evaluate_expression("$1,250.50") == 1250.5
    for bad in ("1 +", "abc", "3,4", "(1", "1 / 0", "2 = 2", "__import__('os')"):
        with pytest.raises(ValueError):
            evaluate_expression(bad)
    assert format_number(450.0) == "450"
    assert format_number(2.50) == "2.5"
    assert format_number(-0.0) == "0"
    assert format_number(10 / 3) == "3.3333333333"


def test_label_normalisation():
    math_task = get_task("svamp")
    assert math_task.normalize_label("( 10.0 * 45.0 )") == "450"
    assert math_task.normalize_label("( 5.0 / 2.0 )") == "2.5"
    assert math_task.normalize_label(72) == "72"
    assert math_task.normalize_label("text\n#### 1,000") == "1000"
    with pytest.raises(ValueError):
        math_task.normalize_label("seven")
    mc = get_task("cqa")
    assert mc.normalize_label("Wooded Area", BEAVER) == "wooded area"
    assert mc.normalize_label("(c)", BEAVER) == "wooded area"
    with pytest.raises(ValueError):
        mc.normalize_label("forest", BEAVER)
    assert get_task("esnli").normalize_label(2) == "contradiction"
    assert get_task("rte").normalize_label("not_entailment") == "not_entailment"
    assert get_task("rte").normalize_label(1) == "not_entailment"
    assert get_task("yes-no").normalize_label(True) == "yes"


def test_is_correct():
    svamp = get_task("svamp")
    assert svamp.is_correct("450.0", MATH)
    assert svamp.is_correct("450.00001", MATH)
    assert not svamp.is_correct("451", MATH)
    assert not svamp.is_correct(None, MATH)
    third = Example("t", "10/3?", format_number(10 / 3))
    assert svamp.is_correct(format_number(evaluate_expression("10 / 3")), third)
    assert get_task("cqa").is_correct("Wooded Area", BEAVER)
    assert not get_task("esnli").is_correct("entailment", NLI)


def test_candidates_and_answer_text():
    mc = get_task("cqa")
    assert mc.answer_text(BEAVER) == "(c) wooded area"
    cands = mc.candidates(BEAVER)
    assert cands[2] == "(c) wooded area" and len(cands) == 5
    assert [mc.candidate_label(BEAVER, i) for i in range(5)] == BEAVER.choices
    assert get_task("esnli").candidates(NLI) == ["entailment", "neutral", "contradiction"]
    assert get_task("rte").candidates(RTE) == ["entailment", "not_entailment"]
    assert get_task("rte").candidate_label(RTE, 1) == "not_entailment"
    assert get_task("yes-no").candidates(YN) == ["yes", "no"]
    assert get_task("svamp").candidates(MATH) is None
    assert get_task("svamp").answer_text(MATH) == "450"


# ---- prompts -----------------------------------------------------------------------------


def test_input_texts():
    assert get_task("cqa").input_text(BEAVER) == (
        f"Question: {BEAVER.question}\nAnswer choices:\n(a) british columbia\n"
        "(b) body of water\n(c) wooded area\n(d) pay debts\n(e) zoo"
    )
    assert (
        get_task("esnli").input_text(NLI)
        == "Premise: A man lies in bed.\nHypothesis: A man sleeps."
    )
    assert get_task("svamp").input_text(MATH) == f"Question: {MATH.question}"
    assert get_task("yes-no").input_text(YN) == "Question: Is the sky blue?"


def test_chat_prompt_zero_and_few_shot():
    task = get_task("cqa")
    msgs = task.prompt(BEAVER, chat=True)
    assert msgs == [
        {"role": "user", "content": task.instruction() + "\n\n" + task.input_text(BEAVER)}
    ]
    shot = Example("s", "Where do fish live?", "sea", ["sea", "tree", "car", "sky", "road"])
    msgs = task.prompt(BEAVER, chat=True, fewshot=[shot])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"] == "(a) sea"
    assert msgs[-1]["content"].endswith(task.input_text(BEAVER))


def test_plain_prompt_zero_and_few_shot():
    task = get_task("svamp")
    shot = Example("s", "2 + 2?", "4", rationale="Two and two make four.")
    p = task.prompt(MATH, chat=False)
    assert p == f"{task.instruction()}\n\nQuestion: {MATH.question}\nAnswer:"
    p = task.prompt(MATH, chat=False, fewshot=[shot])
    assert p == (
        f"{task.instruction()}\n\nQuestion: 2 + 2?\nAnswer: 4\n\nQuestion: {MATH.question}\nAnswer:"
    )


def test_cot_prompts_ask_for_reasoning_and_use_rationales():
    task = get_task("cqa")
    assert "step by step" in task.instruction(cot=True)
    assert "So the answer is" in task.instruction(cot=True)
    assert "step by step" not in task.instruction()
    p = task.prompt(BEAVER, chat=False, fewshot=[BEAVER], cot=True)
    assert f"Answer: {BEAVER.rationale} So the answer is (c) wooded area.\n\n" in p
    msgs = task.prompt(BEAVER, chat=True, fewshot=[BEAVER], cot=True)
    assert msgs[1]["content"] == f"{BEAVER.rationale} So the answer is (c) wooded area."
    assert "step by step" in msgs[-1]["content"]
    # A CoT target parses back to its own label.
    for t, ex in ((task, BEAVER), (get_task("svamp"), MATH), (get_task("esnli"), NLI)):
        assert t.extract_answer(t.target_text(ex, cot=True), ex) == ex.label
    # No rationale: the target is just the conclusion.
    assert get_task("svamp").target_text(MATH, cot=True) == "So the answer is 450."


def test_stop_strings():
    assert "\n\n" in get_task("cqa").stop
    assert "\nPremise:" in get_task("esnli").stop


# ---- registry and examples ---------------------------------------------------------------


def test_registry():
    expected = {"cqa", "svamp", "gsm8k", "esnli", "anli1", "rte", "multiple-choice", "math"}
    expected |= {"nli", "nli2", "yes-no", "private-records"}
    assert set(TASK_NAMES) == expected
    kinds = {"multiple-choice", "math", "nli", "yes-no"}
    for name in TASK_NAMES:
        t = get_task(name)
        assert t.name == name and t.kind in kinds
    assert isinstance(get_task("cqa"), MultipleChoiceTask)
    assert isinstance(get_task("private-records"), MathTask)
    assert isinstance(get_task("yes-no"), YesNoTask)
    assert isinstance(get_task("nli2"), NLITask) and get_task("nli2").labels == (
        "entailment",
        "not_entailment",
    )
    assert get_task("ESNLI").name == "esnli"
    with pytest.raises(ConfigError) as e:
        get_task("squad")
    assert "cqa" in str(e.value) and "private-records" in str(e.value)


def test_example_dict_round_trip():
    d = BEAVER.to_dict()
    assert d["choices"] == BEAVER.choices and d["rationale"] == BEAVER.rationale
    assert Example.from_dict(d) == BEAVER
    ex = Example.from_dict({"id": 3, "question": "q", "label": 4, "extra": 1})
    assert ex.id == "3" and ex.label == "4" and ex.meta == {"extra": 1}
    with pytest.raises(DataError):
        Example.from_dict({"question": "q"})


def test_multiple_choice_text_answer_style():
    from fedcot.data.tasks import MultipleChoiceTask

    ex = Example("1", "Where do trees grow?", "forest", ["ocean", "forest", "desert"])
    letter = get_task("cqa")
    text = get_task("cqa", answer_style="text")
    assert isinstance(text, MultipleChoiceTask) and text.num_choices == 5
    assert letter.answer_text(ex) == "(b) forest" and text.answer_text(ex) == "forest"
    assert text.candidates(ex) == ["ocean", "forest", "desert"]
    assert text.candidate_label(ex, 1) == "forest"
    assert "text of the correct choice" in text.instruction()
    assert "<choice text>" in text.instruction(cot=True)
    target = text.target_text(
        Example(**{**ex.to_dict(), "rationale": "Trees need soil."}), cot=True
    )
    assert target == "Trees need soil. So the answer is forest."
    assert text.extract_answer(target, ex) == "forest"
    # Non-MC tasks ignore the style; an unknown style is an error.
    assert get_task("esnli", answer_style="text").kind == "nli"
    with pytest.raises(ConfigError):
        MultipleChoiceTask("x", answer_style="emoji")


def test_choice_text_matches_up_to_articles_and_case():
    task = get_task("multiple-choice")
    ex = Example(
        "m1",
        "Why wait after eating?",
        "the mind needs time to digest",
        ["the mind needs time to digest", "a stomach ache", "energy"],
    )
    said = "So the answer is Mind needs time to digest."
    assert task.extract_answer(said, ex) == "the mind needs time to digest"
    assert task.extract_answer("So the answer is the  Stomach ache.", ex) == "a stomach ache"
