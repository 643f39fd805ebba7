"""Answer extraction from generated chain-of-thought text (DESIGN.md section 7).

Two rules, both recorded, because GSM8K scores swing with answer matching:

* **strict**: only an explicit final answer counts: ``#### n`` or "The (final) answer is n"
  (the last one when the model states several).
* **flexible**: the strict answer if there is one, else the last ``\\boxed{...}``, else the last
  number in the text. For option letters, flexible also accepts the last option written as ``(B)``
  or ``B)``, else the last number when it equals exactly one option's value.

Numbers are compared as decimals after removing thousands commas, currency signs, a trailing percent
sign and the unicode minus, so "$1,234.50", "1234.5" and "1234.50" are the same answer. A model that
thinks (Qwen3 ``<think>...</think>``) is judged on the text after its last ``</think>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

CURRENCY = "$€£¥₹"
# A number: optional sign (not a hyphen inside a word or an expression like 16-3), optional currency,
# digits with optional thousands commas, optional decimals; or a bare decimal like .5.
NUMBER = (
    rf"(?<!\w)[-−]?[{CURRENCY}]?\s?(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?(?!\d)"
    rf"|(?<![\w.])[-−]?[{CURRENCY}]?\.\d+"
)
NUMBER_RE = re.compile(NUMBER)
ANSWER_IS = r"(?:final\s+)?answer\s+is\s*:?\s*\**\s*"
STRICT_NUMBER = re.compile(rf"####\s*({NUMBER})|{ANSWER_IS}({NUMBER})", re.I)
BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
# A letter answer: "(b)" anywhere, a bare letter when it stands alone; a lower-case "a" only before
# punctuation or the end, so "the answer is a bit more" is not read as option A.
LETTER_AFTER = r"(?:\(([A-Ea-e])\)|([A-E])(?!\w)|([b-e])(?!\w)|(a)(?=\s*(?:[).,:;]|$)))"
STRICT_LETTER = re.compile(rf"(?:####\s*|(?i:{ANSWER_IS}(?:option\s+)?)){LETTER_AFTER}", re.M)
OPTION_MENTION = re.compile(r"(?<![\w(])\(([A-Ea-e])\)|(?<![\w(])([A-E])\)")


def answer_part(text: str) -> str:
    """The part of a generation that holds the answer: after the last ``</think>`` when present."""
    return text.rsplit("</think>", 1)[-1]


def normalize_number(text: str) -> str | None:
    """Canonical decimal string ('1,234.50' -> '1234.5', '-0' -> '0'), or None when not a number."""
    cleaned = text.strip().replace("−", "-").replace(",", "").rstrip("%").rstrip(".")
    cleaned = re.sub(rf"[{CURRENCY}\s]", "", cleaned)
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = value.normalize()
    return "0" if value == 0 else format(value, "f")


def _last_number(text: str) -> str | None:
    for match in reversed(list(NUMBER_RE.finditer(text))):
        value = normalize_number(match.group(0))
        if value is not None:
            return value
    return None


def strict_number(text: str) -> str | None:
    """The number after the last ``####`` or "The answer is"."""
    matches = list(STRICT_NUMBER.finditer(answer_part(text)))
    if not matches:
        return None
    last = matches[-1]
    return normalize_number(last.group(1) or last.group(2))


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``."""
    matches = BOXED.findall(answer_part(text))
    return matches[-1].strip() if matches else None


def flexible_number(text: str) -> str | None:
    """Strict answer, else the number in the last ``\\boxed{}``, else the last number of the text."""
    strict = strict_number(text)
    if strict is not None:
        return strict
    box = boxed(text)
    if box is not None:
        number = _last_number(box.replace("\\$", "$").replace("\\%", "%"))
        if number is not None:
            return number
    return _last_number(answer_part(text))


def _letter(match: re.Match[str]) -> str:
    return next(g for g in match.groups() if g).upper()


def strict_letter(text: str, num_choices: int = 5) -> str | None:
    """The option letter after the last ``####`` or "The answer is" (upper case)."""
    letters = [_letter(m) for m in STRICT_LETTER.finditer(answer_part(text))]
    letters = [x for x in letters if x in "ABCDE"[:num_choices]]
    return letters[-1] if letters else None


def flexible_letter(text: str, choices: Sequence[str]) -> str | None:
    """Strict letter, else a boxed letter, else the last option written as (B) or B), else the last
    number when it equals the value of exactly one option."""
    valid = "ABCDE"[: len(choices)]
    strict = strict_letter(text, len(choices))
    if strict is not None:
        return strict
    part = answer_part(text)
    box = boxed(part)
    if box is not None:
        inner = re.sub(r"\\text\{([^{}]*)\}", r"\1", box).strip().strip("()").upper()
        if len(inner) == 1 and inner in valid:
            return inner
    mentions = [_letter(m) for m in OPTION_MENTION.finditer(part)]
    mentions = [x for x in mentions if x in valid]
    if mentions:
        return mentions[-1]
    number = flexible_number(part)
    if number is None:
        return None
    values = [_option_value(choice) for choice in choices]
    hits = [letter for letter, value in zip(valid, values, strict=True) if value == number]
    return hits[0] if len(hits) == 1 else None


def _option_value(choice: str) -> str | None:
    """An option's numeric value when the option is a single number (with a unit at most)."""
    numbers = NUMBER_RE.findall(choice)
    return normalize_number(numbers[0]) if len(numbers) == 1 else None


def same_number(a: str | None, b: str | None) -> bool:
    """Equal as decimals (both already normalised or raw number strings)."""
    if a is None or b is None:
        return False
    x, y = normalize_number(a), normalize_number(b)
    return x is not None and x == y
