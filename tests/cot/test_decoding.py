"""Decoding the server's rationale: stand-ins only, conclusion intact, arithmetic redone."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from fedcot.cot.decoders import inverse_map
from fedcot.data.arithmetic import calculate, parse_number, reexecute
from fedcot.privacy.perturb import Perturbation, UnitDraw

# A FedCoT-E-style word swap on function words, a content-word swap, an entity surrogate.
_UNITS = [
    UnitDraw("there", "the", "word", 3.0),
    UnitDraw("not", "is", "word", 3.0),
    UnitDraw("jellyfish", "starfish", "word", 3.0),
    UnitDraw("Anna", "Olga", "person", 0.0, "person"),
    UnitDraw("May", "Will", "person", 0.0, "person"),
    UnitDraw("sea", "sea", "word", 3.0),
    UnitDraw("coral", "sea", "word", 3.0),  # a stand-in that is also a kept word
]
_PERTURBATION = Perturbation("p", "", "", _UNITS, {u.original: u.output for u in _UNITS})
_DECODED = {"starfish": "jellyfish", "Olga": "Anna", "Will": "May"}
_SERVER_WORDS = ["the", "is", "So", "answer", "will", "not", "there", "sea", "fish", "(b)", "."]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_SERVER_WORDS + list(_DECODED)), min_size=1, max_size=25))
def test_decoder_changes_only_stand_ins(words: list[str]) -> None:
    text = " ".join(words) + " So the answer is (b) the sea."
    out = inverse_map(text, _PERTURBATION).split(" ")
    assert len(out) == len(words) + 7
    for before, after in zip(words, out):
        assert after == _DECODED.get(before, before)
    assert out[len(words) :] == ["So", "the", "answer", "is", "(b)", "the", "sea."]


def test_conclusion_marker_and_function_words_survive() -> None:
    text = "The starfish is not a fish. Olga knows. So the answer is (c) the sea."
    assert inverse_map(text, _PERTURBATION) == (
        "The jellyfish is not a fish. Anna knows. So the answer is (c) the sea."
    )


def _numbers(pairs: dict[str, str] | list[tuple[str, str]]) -> Perturbation:
    """Number stand-ins, original → stand-in (a list where a stand-in repeats)."""
    items = list(pairs.items()) if isinstance(pairs, dict) else pairs
    units = [UnitDraw(o, s, "number", 1.0, "number") for o, s in items]
    return Perturbation("n", "", "", units, dict(items))


def test_chained_steps_follow_the_original_numbers() -> None:
    p = _numbers({"8": "11", "3": "3"})
    text = (
        "Jack had 11 pens and bought 4 more: 11 + 4 = 15. He gave 3 away: 15 - 3 = 12. "
        "Twice that is 12 * 2 = 24. So the answer is 24."
    )
    assert inverse_map(text, p) == (
        "Jack had 8 pens and bought 4 more: 8 + 4 = 12. He gave 3 away: 12 - 3 = 9. "
        "Twice that is 9 * 2 = 18. So the answer is 18."
    )


def test_a_stand_in_shared_by_two_numbers_is_decoded_in_turn() -> None:
    """The mechanism drew 5 for both 20 and 7 (or drew 7 for 20 next to a kept 7): the
    mentions are decoded in prompt order, and the steps are redone on the right numbers."""
    text = "She has 5 and gets 5 more: 5 + 5 = 10. So the answer is 10."
    want = "She has 20 and gets 7 more: 20 + 7 = 27. So the answer is 27."
    assert inverse_map(text, _numbers([("20", "5"), ("7", "5")])) == want
    kept = _numbers([("20", "7"), ("7", "7")])
    assert inverse_map(text.replace("5", "7").replace("10", "14"), kept) == want
    # from the step whose result is the stand-in's value on, mentions are that result's
    zeros = _numbers([("26", "0"), ("19", "0")])
    assert inverse_map("She has 0 and gets 0 more: 0 + 0 = 0. So the answer is 0.", zeros) == (
        "She has 26 and gets 19 more: 26 + 19 = 45. So the answer is 45."
    )
    # a stand-in shared by one number only stays a plain substitution
    assert inverse_map("5 + 5 = 10.", _numbers([("3", "5"), ("3", "5")])) == "3 + 3 = 6."


def test_decimals_money_and_percentages() -> None:
    p = _numbers({"2.25": "3.5", "1,000.00": "1,200.50", "40": "25"})
    text = (
        "Each bag weighs 3.5 kg, so 3.5 × 4 = 14 kg. Tax is 25% of $1,200.50 = $300.13, "
        "and 12 / 48 * 100 = 25%."
    )
    assert inverse_map(text, p) == (
        "Each bag weighs 2.25 kg, so 2.25 × 4 = 9 kg. Tax is 40% of $1,000.00 = $400.00, "
        "and 12 / 48 * 100 = 25%."  # no stand-in in this step: left as written
    )


def test_steps_without_a_stand_in_are_left_alone_and_server_slips_are_redone() -> None:
    p = _numbers({"6": "9"})
    text = "First 60 / 2 = 31. Then 9 + 1 = 11 (sic). Finally 31 + 9 = 39."
    assert inverse_map(text, p) == "First 60 / 2 = 31. Then 6 + 1 = 7 (sic). Finally 31 + 6 = 37."


def test_parenthesised_and_division_steps() -> None:
    out = reexecute("(11 + 4) * 2 = 30, and 22 / 11 = 2.", {Decimal(11): Decimal(3)})
    assert out == "(3 + 4) * 2 = 14, and 22 / 3 = 7.33."


def test_numbers_inside_words_and_identifiers_are_not_numbers() -> None:
    out = reexecute("Room A11 on the 11th floor, code 11-B, 11.", {Decimal(11): Decimal(7)})
    assert out == "Room A11 on the 11th floor, code 11-B, 7."


def test_parse_number_reads_decorations() -> None:
    tok = parse_number("$1,200.50")
    assert tok is not None and tok.value == Decimal("1200.50")
    assert (tok.dollar, tok.percent, tok.commas, tok.decimals) == (True, False, True, 2)
    assert tok.format(Decimal(7)) == "$7.00"
    assert parse_number("abc") is None


def test_negative_results_and_signed_mentions_follow() -> None:
    p = _numbers({"14": "36", "2": "6918"})
    text = "He had 36 and lost 6918: 36 - 6918 = -6652. So the answer is -6652."
    assert inverse_map(text, p) == "He had 14 and lost 2: 14 - 2 = 12. So the answer is 12."
    out = reexecute("5-3 = 2, then 2 - 9 = -7", {Decimal(5): Decimal(4)})
    assert out == "4-3 = 1, then 1 - 9 = -8"


def test_calculator_redoes_every_step_and_the_answer_follows() -> None:
    from fedcot.data.arithmetic import calculate

    out = calculate("118 EUR + 195 EUR = 225 EUR. Then 225 * 2 = 450.\nSo the answer is 450.")
    assert out == "118 EUR + 195 EUR = 313 EUR. Then 313 * 2 = 626.\nSo the answer is 626."
    assert calculate("No steps here, 12 apples.") == "No steps here, 12 apples."


def test_steps_with_unit_words_between_the_numbers() -> None:
    sets = _numbers({"11": "7", "13": "130"})
    text = "Each of 7 sets has 130 chairs. 7 sets * 130 chairs = 910 chairs. So the answer is 910."
    assert inverse_map(text, sets) == (
        "Each of 11 sets has 13 chairs. 11 sets * 13 chairs = 143 chairs. So the answer is 143."
    )
    pages = _numbers({"576": "43652", "8": "6"})
    assert inverse_map("43652 pages ÷ 6 pages/day = 710 days.", pages) == (
        "576 pages ÷ 8 pages/day = 72 days."
    )
    # "of" and "x" stay operators, not units
    assert calculate("5 groups of 3 = 14, and 3 boxes x 4 apples = 11 apples.") == (
        "5 groups of 3 = 15, and 3 boxes x 4 apples = 12 apples."
    )


def test_a_difference_keeps_the_servers_larger_minus_smaller_plan() -> None:
    """The server took 3 from 4 (its stand-ins); the real numbers are 13 and 3: the decoded
    step is 13 - 3, not 3 - 13. The calculator, run on a student's own steps, never swaps."""
    p = _numbers([("13", "3"), ("3", "4")])
    text = "Now 3 orchids and 4 roses. 4 - 3 = 1 more orchid. So the answer is 1."
    assert inverse_map(text, p) == (
        "Now 13 orchids and 3 roses. 13 - 3 = 10 more orchid. So the answer is 10."
    )
    slipped = _numbers([("12", "6")])  # the server's own step was negative: kept
    assert inverse_map("2 trees - 6 trees = 2 trees.", slipped) == "2 trees - 12 trees = -10 trees."
    assert calculate("3 - 13 = 10.") == "3 - 13 = -10."


def test_a_quotient_keeps_the_servers_larger_over_smaller_plan() -> None:
    p = _numbers([("2", "355"), ("28", "3")])
    text = "She gave 355 to each and had 3: 355 / 3 = 118.33 boys. So the answer is 118.33."
    assert inverse_map(text, p) == (
        "She gave 2 to each and had 28: 28 / 2 = 14.00 boys. So the answer is 14.00."
    )
