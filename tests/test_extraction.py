"""Answer extraction on hand-written generations: every number and letter format, strict vs flexible."""

from __future__ import annotations

import pytest

from rkuprune.evaluation.extraction import (
    flexible_letter,
    flexible_number,
    normalize_number,
    same_number,
    strict_letter,
    strict_number,
)


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("She sells 16 - 3 - 4 = 9 eggs for 9 * $2 = $18.\n#### 18", "18", "18"),
        ("So 5 + 7 = 12. The answer is 12.", "12", "12"),
        ("The final answer is: **-7**", "-7", "-7"),
        ("Total: $1,234.50 in all. The answer is $1,234.50.", "1234.5", "1234.5"),
        ("The answer is €5", "5", "5"),
        ("The answer is 50%.", "50", "50"),
        ("The answer is −3 degrees.", "-3", "-3"),
        ("The answer is 3.50", "3.5", "3.5"),
        ("We get \\boxed{42} apples.", None, "42"),
        ("Hence \\boxed{\\$1,000}.", None, "1000"),
        ("First 10 apples, then 3 more, so 13 apples.", None, "13"),
        ("16-3 is the range", None, "3"),  # a hyphen between numbers is not a minus sign
        ("It costs .5 dollars", None, "0.5"),
        ("The answer is 4. Later I said 99.", "4", "4"),  # an explicit answer beats the last number
        ("#### 7 and the answer is 8", "8", "8"),  # several explicit answers: the last one
        ("I do not know.", None, None),
        ("<think>maybe 3, the answer is 3</think>The answer is 5.", "5", "5"),  # judged after </think>
        ("<think>the answer is 3</think>So it is five.", None, None),
    ],
)
def test_number_extraction(text: str, strict: str | None, flexible: str | None) -> None:
    assert strict_number(text) == strict
    assert flexible_number(text) == flexible


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [("5.00", "5", True), ("1,000", "1000", True), ("-0", "0", True), ("$3", "3", True), ("3.1", "3.10", True)],
)
def test_numbers_compare_as_decimals(a: str, b: str, equal: bool) -> None:
    assert same_number(a, b) is equal
    assert not same_number(None, b)


def test_normalize_rejects_non_numbers() -> None:
    assert normalize_number("abc") is None
    assert normalize_number("1,234.0") == "1234"


CHOICES = ("60", "72 km/hr", "80", "90", "54")


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("The speed is 72. The answer is (B).", "B", "B"),
        ("the answer is b.", "B", "B"),
        ("the answer is c because 80 fits", "C", "C"),
        ("The answer is A", "A", "A"),
        ("#### E", "E", "E"),
        ("The answer is option D.", "D", "D"),
        ("the answer is a bit unclear, but (C) looks right", None, "C"),  # "a bit" is not option A
        ("I pick D) 90.", None, "D"),
        ("\\boxed{D}", None, "D"),
        ("\\boxed{\\text{(e)}}", None, "E"),
        ("So the speed is 72 km/hr.", None, "B"),  # the last number matches one option's value
        ("So the speed is 75 km/hr.", None, None),  # matches no option
        ("The answer is F.", None, None),  # not an option letter
    ],
)
def test_letter_extraction(text: str, strict: str | None, flexible: str | None) -> None:
    assert strict_letter(text, len(CHOICES)) == strict
    assert flexible_letter(text, CHOICES) == flexible


def test_a_value_shared_by_two_options_is_not_guessed() -> None:
    assert flexible_letter("It is 5.", ("5", "5.0", "6")) is None


def test_fewer_options_limit_the_letters() -> None:
    assert strict_letter("The answer is E.", 4) is None
    assert flexible_letter("The answer is (D).", ("1", "2", "3", "4")) == "D"
