r"""Answer extraction from generated chain-of-thought text (docs/design.md section 7).

Two families of rules, both recorded, because GSM8K scores swing with answer matching.

**lm-eval's rules** (``acc/<dataset>@rkuprune`` and ``acc/<dataset>@rkuprune/strict``): the answer is
read as lm-eval reads it (the prompts are the project's, see ``reasoning``). They reproduce the
installed lm-eval's filters and comparison exactly (``tests/test_extraction.py`` runs lm-eval's own
filter objects as the oracle):

* numbers (GSM8K, synthetic): *flexible-extract* is the **last** match of
  ``(-?[$0-9.,]{2,})|(-?[0-9]+)``; *strict-match* is the **first** ``The answer is (\-?[0-9\.\,]+).``
  (``gsm8k_cot``, the style of our exemplars) or the first ``#### (\-?[0-9\.\,]+)`` (``gsm8k``, with
  ``answer_style=hashes``). Both are compared to the gold as strings after lm-eval's ``exact_match``
  with ``regexes_to_ignore`` ``,``, ``\$``, ``(?s).*#### ``, ``\.$`` and ``ignore_case``: "18.00" is not 18.
* option letters (MathQA, AQuA): lm-eval has no generative variant of either, so we follow its
  generative multiple-choice tasks (``bbh_cot_zeroshot``): the exemplars end with "The answer is (B).",
  *strict-match* is the first text after "The answer is " (less its last character), *flexible-extract*
  is lm-eval's ``MultiChoiceRegexFilter`` (last ``(X)``, else the last option text, else ``: X``), both
  compared to "(B)" after that task's ``exact_match`` settings.

Every rule reads the text :func:`answer_part` gives: the whole generation, as lm-eval's HFLM by
default, or, when a task sets ``think_end_token`` (a thinking model such as Qwen3), the text after its
last occurrence, as HFLM with that ``think_end_token``.

**The project's lenient rules** (``acc/<dataset>@rkuprune/lenient``):

* numbers: the last ``#### n`` or "The (final) answer is n", else the last ``\\boxed{...}``, else the
  last number in the text; compared as decimals after removing thousands commas, currency signs, a
  trailing percent sign and the unicode minus, so "$1,234.50", "1234.5" and "1234.50" are the same answer.
* letters: the last explicit letter answer, else a boxed letter, else the last option written as
  ``(B)`` or ``B)``, else the last number when it equals exactly one option's value.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache

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


THINK_END = "</think>"


def answer_part(text: str, think_end: str | None) -> str:
    """The part of a generation that holds the answer: all of it when ``think_end`` is None (lm-eval's
    default), else what follows the last ``think_end`` (lm-eval's ``think_end_token``: split, keep the
    last part, strip its start)."""
    return text if think_end is None else text.split(think_end)[-1].lstrip()


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
    matches = list(STRICT_NUMBER.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return normalize_number(last.group(1) or last.group(2))


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``."""
    matches = BOXED.findall(text)
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
    return _last_number(text)


def _letter(match: re.Match[str]) -> str:
    return next(g for g in match.groups() if g).upper()


def strict_letter(text: str, num_choices: int = 5) -> str | None:
    """The option letter after the last ``####`` or "The answer is" (upper case)."""
    letters = [_letter(m) for m in STRICT_LETTER.finditer(text)]
    letters = [x for x in letters if x in "ABCDE"[:num_choices]]
    return letters[-1] if letters else None


def flexible_letter(text: str, choices: Sequence[str]) -> str | None:
    """Strict letter, else a boxed letter, else the last option written as (B) or B), else the last
    number when it equals the value of exactly one option."""
    valid = "ABCDE"[: len(choices)]
    strict = strict_letter(text, len(choices))
    if strict is not None:
        return strict
    box = boxed(text)
    if box is not None:
        inner = re.sub(r"\\text\{([^{}]*)\}", r"\1", box).strip().strip("()").upper()
        if len(inner) == 1 and inner in valid:
            return inner
    mentions = [_letter(m) for m in OPTION_MENTION.finditer(text)]
    mentions = [x for x in mentions if x in valid]
    if mentions:
        return mentions[-1]
    number = flexible_number(text)
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


# -- lm-eval's rules ------------------------------------------------------------------------------
# Patterns and comparison settings as the installed lm-eval's task YAMLs write them.
FLEXIBLE_NUMBER = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"  # gsm8k, gsm8k_cot: flexible-extract, group_select -1
STRICT_NUMBER_RULES = {
    "answer_is": r"The answer is (\-?[0-9\.\,]+).",  # gsm8k_cot strict-match, take_first
    "hashes": r"#### (\-?[0-9\.\,]+)",  # gsm8k strict-match, take_first
}
NUMBER_IGNORE = (",", r"\$", "(?s).*#### ", r"\.$")  # gsm8k exact_match regexes_to_ignore
# bbh_cot_zeroshot (multiple choice): strict-match and flexible-extract, and its exact_match settings.
STRICT_LETTER_RULE = (
    r"((?<=The answer is )(.*)(?=.)|(?<=the answer is )(.*)(?=.)"
    r"|(?<=The answer: )(.*)(?=.)|(?<=The final answer: )(.*)(?=.))"
)
FLEXIBLE_LETTER = r"(\([A-Z]\))"
LETTER_IGNORE = (r"\.$", ",", r"\\", "\n", '"')
FALLBACK = "[invalid]"  # what lm-eval's filters return when nothing matches


@dataclass(frozen=True)
class Extracted:
    """One generation's answers under lm-eval's two filters (None where lm-eval writes "[invalid]")."""

    strict: str | None
    flexible: str | None


def regex_filter(pattern: str, text: str, group_select: int = 0) -> str | None:
    """lm-eval's ``regex`` filter followed by ``take_first``: the ``group_select``-th match of ``findall``;
    for a pattern with several groups, its first non-empty group; stripped."""
    matches = re.findall(pattern, text)
    if not matches:
        return None
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((group for group in match if group), None)
        if match is None:
            return None
    return match.strip()


@cache
def _punctuation_table() -> dict[int, None]:
    """Every unicode punctuation character, removed by ``ignore_punctuation`` (built once: ~1 s)."""
    return dict.fromkeys(i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P"))


def _ignore_case_and_punctuation(text: str) -> str:
    return text.lower().translate(_punctuation_table())


def _pick(pattern: str | re.Pattern[str], text: str, convert: dict[str, str]) -> str:
    """One step of ``MultiChoiceRegexFilter``: the last match (first non-empty group), converted to its
    "(X)" form when the conversion knows it; "" when nothing matched."""
    matches = re.findall(pattern, text)
    if not matches:
        return ""
    match = matches[-1]
    if isinstance(match, tuple):
        match = next((group for group in match if group), "")
    match = match.strip()
    return convert.get(match, match) if match else match


def multi_choice_filter(text: str, choices: Sequence[str]) -> str | None:
    """lm-eval's ``MultiChoiceRegexFilter`` as bbh_cot_zeroshot configures it (pattern ``(\\([A-Z]\\))``,
    last match, case and punctuation ignored in the fallback): the last "(X)"; else the last option
    text found in the case- and punctuation-free response, as "(X)"; else the last ``: X``."""
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    found = _pick(FLEXIBLE_LETTER, text, {})
    if not found:
        texts = [_ignore_case_and_punctuation(choice.strip()) for choice in choices]
        by_text = {t: f"({letter})" for t, letter in zip(texts, letters, strict=True)}
        options = "|".join(sorted((re.escape(t) for t in texts), key=len, reverse=True))
        found = _pick(options, _ignore_case_and_punctuation(text), by_text)
    if not found:
        found = _pick(rf":[\s]*({'|'.join(letters)})", text, {x: f"({x})" for x in letters})
    return found or None


def exact_match(prediction: str | None, gold: str, ignore: Sequence[str]) -> bool:
    """lm-eval's ``exact_match`` with ``ignore_case``: both strings lose every ``ignore`` regex, are
    lower-cased and must then be equal ("[invalid]" for a missing prediction, as lm-eval passes it)."""
    a, b = FALLBACK if prediction is None else prediction, gold
    for pattern in ignore:
        a, b = re.sub(pattern, "", a), re.sub(pattern, "", b)
    return a.lower() == b.lower()


def lm_eval_number(text: str, answer_style: str = "answer_is") -> Extracted:
    """GSM8K answers as lm-eval extracts them (``answer_style``: "answer_is" = gsm8k_cot, "hashes" = gsm8k)."""
    return Extracted(regex_filter(STRICT_NUMBER_RULES[answer_style], text), regex_filter(FLEXIBLE_NUMBER, text, -1))


def lm_eval_letter(text: str, choices: Sequence[str]) -> Extracted:
    """Option answers as lm-eval's generative multiple-choice tasks extract them ("(B)")."""
    return Extracted(regex_filter(STRICT_LETTER_RULE, text), multi_choice_filter(text, choices))


def number_is_correct(prediction: str | None, gold: str) -> bool:
    return exact_match(prediction, gold, NUMBER_IGNORE)


def letter_is_correct(prediction: str | None, gold_letter: str) -> bool:
    return exact_match(prediction, f"({gold_letter})", LETTER_IGNORE)
