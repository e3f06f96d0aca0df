"""Numeric answers: what is read, what is refused, and that no garbage crashes the parser."""
import random
import string

import pytest

from agents.llm.parsing import correction, parse_number


@pytest.mark.parametrize("text,value", [
    ("30", 30), ("I give 30 dollars.", 30), ("ANSWER: 45", 45), ("answer = 12.5", 12.5),
    ("Of my 100 dollars I give... Answer: 40", 40), ("1,000", 1000), ("  7\n", 7),
    ("The smallest offer I accept is 0 dollars.", 0), ("30 dollars, yes 30.", 30), ("Answer - 40", 40),
    (".5", 0.5), ("ANSWER: .5", 0.5), ("ANSWER: 1.43.", 1.43),
])
def test_reads_the_answer(text, value):
    assert parse_number(text, 0, 1000).value == value


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("I'm not sure.", "no number"), ("Out of 100, I give 30", "several numbers"),
    ("1500", "outside the allowed range"), ("-5", "outside"), ("12.5", "not a whole number"),
    ("nan", "no number"), ("inf dollars", "no number"), ("1e999", "no number"), ("2e3", "outside"),
])
def test_refuses_with_a_reason(text, reason):
    parsed = parse_number(text, 0, 1000, integer=True)
    assert not parsed.valid and reason in parsed.error
    assert reason in correction(parsed.error, 0, 1000, True)


@pytest.mark.parametrize("text,reason", [
    ("Answer -5", "outside"), ("ANSWER: 1,5", "no number"), ("ANSWER: 3/4", "no number"),
])
def test_a_number_is_read_whole_or_not_at_all(text, reason):
    """The sign after a marker is kept, a decimal comma and a fraction are not cut to their first
    digits (they were read as 5, 1 and 3)."""
    parsed = parse_number(text, 0, 100)
    assert not parsed.valid and reason in parsed.error


def test_fuzzed_garbage_never_crashes():
    rng = random.Random(2507)
    alphabet = string.printable + "٣٤٥０１２€£−–—…ⅫⅣ\u200b\x00"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        if rng.random() < 0.3:
            text += rng.choice(["ANSWER:", "answer -", "1e308", "99999999999999999999", ".5.5", "-0"])
        parsed = parse_number(text, 0, 100, integer=rng.random() < 0.5)
        assert parsed.valid == (parsed.error is None)
        if parsed.valid:
            assert 0 <= parsed.value <= 100
    for thing in (None, 42, b"30", ["30"]):
        assert not parse_number(thing, 0, 100).valid
