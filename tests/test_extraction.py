"""Answer extraction: lm-eval's rules checked against lm-eval's own filter objects and metric (the
oracle), and the project's lenient rules on hand-written generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lm_eval
import pytest
import yaml
from lm_eval.api.metrics import exact_match_hf_evaluate
from lm_eval.filters.extraction import MultiChoiceRegexFilter, RegexFilter
from lm_eval.filters.selection import TakeFirstFilter
from lm_eval.models.utils import postprocess_generated_text

from rkuprune.evaluation import extraction
from rkuprune.evaluation.extraction import (
    answer_part,
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
    ],
)
def test_number_extraction(text: str, strict: str | None, flexible: str | None) -> None:
    assert strict_number(text) == strict
    assert flexible_number(text) == flexible


@pytest.mark.parametrize(
    ("text", "think_end", "strict", "flexible"),
    [
        ("<think>maybe 3, the answer is 3</think>The answer is 5.", "</think>", "5", "5"),  # after </think>
        ("<think>the answer is 3</think>So it is five.", "</think>", None, None),
        ("<think>the answer is 3</think>So it is five.", None, "3", "3"),  # lm-eval's default: all the text
        ("<think>a</think>b</think>The answer is 2.", "</think>", "2", "2"),  # after the last one
    ],
)
def test_think_end_token_decides_which_text_is_judged(
    text: str, think_end: str | None, strict: str | None, flexible: str | None
) -> None:
    part = answer_part(text, think_end)
    assert part == postprocess_generated_text(text, None, think_end)  # lm-eval's HFLM does the same
    assert strict_number(part) == strict
    assert flexible_number(part) == flexible


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


# -- lm-eval as the oracle ------------------------------------------------------------------------
TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"


class _Loader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs, whose ``!function module.Name`` tags name a class by its dotted path."""


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def task_yaml(path: str) -> dict[str, Any]:
    return yaml.load((TASKS_DIR / path).read_text(), Loader=_Loader)


def filters_of(config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {entry["name"]: entry["filter"] for entry in config["filter_list"]}


def run_filter(steps: list[dict[str, Any]], text: str, doc: dict[str, Any]) -> str:
    """Apply one of lm-eval's filter pipelines, built from the task YAML with lm-eval's own classes."""
    responses: Any = [[text]]
    for step in steps:
        kwargs = {k: v for k, v in step.items() if k != "function"}
        function = step["function"]
        if function == "regex":
            filt = RegexFilter(**kwargs)
        elif function.endswith("MultiChoiceRegexFilter"):
            filt = MultiChoiceRegexFilter(**kwargs)
        else:
            assert function == "take_first", function
            filt = TakeFirstFilter()
        responses = list(filt.apply(responses, [doc]))
    return responses[0]


def oracle_match(prediction: str, gold: str, config: dict[str, Any]) -> bool:
    metric = dict(config["metric_list"][0])
    assert metric.pop("metric") == "exact_match"
    for key in ("aggregation", "higher_is_better"):
        metric.pop(key, None)
    return bool(exact_match_hf_evaluate(predictions=[prediction], references=[gold], **metric)["exact_match"])


GSM8K_COT = task_yaml("gsm8k/gsm8k-cot.yaml")
GSM8K = task_yaml("gsm8k/gsm8k.yaml")
BBH_MC = {**task_yaml("bbh/cot_zeroshot/_cot_zeroshot_template_yaml"), **task_yaml("bbh/cot_zeroshot/snarks.yaml")}


def test_our_patterns_are_the_installed_lm_eval_ones() -> None:
    """The constants are lm-eval's, read from its task YAMLs, so an lm-eval upgrade that changes them fails here."""
    cot, plain, mc = filters_of(GSM8K_COT), filters_of(GSM8K), filters_of(BBH_MC)
    assert cot["strict-match"][0]["regex_pattern"] == extraction.STRICT_NUMBER_RULES["answer_is"]
    assert plain["strict-match"][0]["regex_pattern"] == extraction.STRICT_NUMBER_RULES["hashes"]
    assert cot["flexible-extract"][0]["regex_pattern"] == plain["flexible-extract"][0]["regex_pattern"]
    assert cot["flexible-extract"][0]["regex_pattern"] == extraction.FLEXIBLE_NUMBER
    assert tuple(GSM8K_COT["metric_list"][0]["regexes_to_ignore"]) == extraction.NUMBER_IGNORE
    assert tuple(GSM8K["metric_list"][0]["regexes_to_ignore"]) == extraction.NUMBER_IGNORE
    assert mc["strict-match"][0]["regex_pattern"] == extraction.STRICT_LETTER_RULE
    assert mc["flexible-extract"][0]["regex_pattern"] == extraction.FLEXIBLE_LETTER
    assert tuple(BBH_MC["metric_list"][0]["regexes_to_ignore"]) == extraction.LETTER_IGNORE


NUMBER_GENERATIONS = [
    "...The answer is 18. It took 2 days.",  # flexible: the last number (2), not the stated answer
    "#### 5 then later #### 7",  # strict: the first ####
    "The answer is 5. No wait, the answer is 7.",
    "The answer is 18",  # no character after the number: lm-eval's "." takes the last digit
    "The answer is 18.00.",
    "The answer is $1,234.50.",
    "The answer is -3.",
    "The answer is −3.",  # unicode minus
    "So 16 - 3 - 4 = 9 eggs, 9 * $2 = $18.\n#### 18",
    "#### 1,000",
    "####18",
    "We get \\boxed{42} apples",
    "The answer is 50%.",
    "It costs .5 dollars, so 1.",
    "Total 3.. and 4...",
    "I do not know.",
    "",
    "2, 3, 4, 5",
    "<think>the answer is 3.</think>The answer is 5. So 6.",
    "<think>the answer is 3.</think>\nno number here",
    "The answer is 7.\n\nQuestion: next",
    "the answer is 9.",  # strict is case-sensitive
]


@pytest.mark.parametrize("think_end", [None, "</think>"])
@pytest.mark.parametrize("text", NUMBER_GENERATIONS)
@pytest.mark.parametrize(("style", "config"), [("answer_is", GSM8K_COT), ("hashes", GSM8K)])
def test_number_rules_match_lm_eval(text: str, style: str, config: dict[str, Any], think_end: str | None) -> None:
    ours = extraction.lm_eval_number(extraction.answer_part(text, think_end), style)
    part = postprocess_generated_text(text, None, think_end)  # what HFLM hands to the filters
    filters = filters_of(config)
    for name, extracted in (("strict-match", ours.strict), ("flexible-extract", ours.flexible)):
        oracle = run_filter(filters[name], part, {})
        assert (extracted or extraction.FALLBACK) == oracle, name
        for gold in ("18", "5", "1000", "-3", "42", "2", "1234.50"):
            assert extraction.number_is_correct(extracted, gold) == oracle_match(oracle, gold, config), (name, gold)


LETTER_GENERATIONS = [
    "The speed is 72. The answer is (B).",
    "The answer is (B). Actually (C) fits better.",
    "the answer is (b).",
    "The answer is B.",
    "The answer is (B)",  # no character after: lm-eval drops the last one
    "The answer: (D).",
    "The final answer: E.",
    "So it is 72 km/hr.",  # no letter: the option text
    "I pick 80 and then 90",  # two option texts: the last
    "Answer: C",  # the ": X" fallback
    "Options: a, b",
    "no idea",
    "(F) is my answer.",  # not an option, still a "(X)"
    "<think>The answer is (A).</think>The answer is (D).",
    "the answer is a bit unclear",
]
LETTER_CHOICES = ("60", "72 km/hr", "80", "90", "54")


@pytest.mark.parametrize("think_end", [None, "</think>"])
@pytest.mark.parametrize("text", LETTER_GENERATIONS)
def test_letter_rules_match_lm_eval(text: str, think_end: str | None) -> None:
    ours = extraction.lm_eval_letter(extraction.answer_part(text, think_end), LETTER_CHOICES)
    part = postprocess_generated_text(text, None, think_end)
    filters = filters_of(BBH_MC)
    doc = {"choices": list(LETTER_CHOICES)}
    for name, extracted in (("strict-match", ours.strict), ("flexible-extract", ours.flexible)):
        oracle = run_filter(filters[name], part, doc)
        assert (extracted or extraction.FALLBACK) == oracle, name
        for gold in "ABCDE":
            assert extraction.letter_is_correct(extracted, gold) == oracle_match(oracle, f"({gold})", BBH_MC), (
                name,
                gold,
            )


def test_the_issue_examples_differ_from_the_lenient_rule() -> None:
    """The two disagreements the issue names: lm-eval reads 2 and 5 where the lenient rule reads 18 and 7."""
    assert extraction.lm_eval_number("...The answer is 18. It took 2 days.").flexible == "2"
    assert flexible_number("...The answer is 18. It took 2 days.") == "18"
    assert extraction.lm_eval_number("#### 5 ... #### 7", "hashes").strict == "5"
    assert strict_number("#### 5 ... #### 7") == "7"
    assert not extraction.number_is_correct("18.00", "18")  # strings, not decimals
