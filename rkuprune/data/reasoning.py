"""Question data for reasoning benchmarks: GSM8K, AQuA-RAT, MathQA and the project's own arithmetic
word problems, read from ``data.root`` (docs/design.md section 6 layout) or from the hub.

Every dataset becomes a list of :class:`Question` with the gold answer already normalised (a number
string for GSM8K, an upper-case option letter for AQuA and MathQA), so prompting, extraction and
scoring never see a file format. A malformed file is a :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkuprune.data import sources
from rkuprune.data.sources import DataConfig
from rkuprune.data.synthetic import word_problems
from rkuprune.errors import DataError

LETTERS = "ABCDE"
# Hub ids used when data.root is unset. allenai/math_qa is a loading script, which datasets>=4 refuses;
# regisss/math_qa is its parquet mirror (same rows, same columns; the mirror lm-eval's mathqa task uses).
HUB = {"gsm8k": ("openai/gsm8k", "main"), "aqua": ("deepmind/aqua_rat", "raw"), "mathqa": ("regisss/math_qa", None)}
# The project's split names -> the hub's (AQuA's local dev file is the hub's validation split).
HUB_SPLITS = {("aqua", "dev"): "validation"}
CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class Question:
    """One benchmark item. ``choices`` are option texts in letter order (A, B, ...), empty for numeric
    answers; ``solution`` is a worked solution, used only when the question serves as an exemplar."""

    id: str
    question: str
    gold: str
    choices: tuple[str, ...] = ()
    solution: str = ""


def numbered_json_array(path: Path) -> list[tuple[int, Any]]:
    """(line number where the element starts, element) for a file holding one JSON array; json.load
    alone cannot say which line a malformed element is on."""
    text = sources.read_utf8(path)
    decoder = json.JSONDecoder()
    counted = [0, 1]  # (position, line there): lines are counted forward once, not from the start each time

    def line_of(pos: int) -> int:
        counted[1] += text.count("\n", counted[0], pos)
        counted[0] = pos
        return counted[1]

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        return pos

    pos = skip(0)
    if not text.startswith("[", pos):
        raise DataError(f"{path}:{line_of(pos)}: expected one JSON array of objects")
    rows: list[tuple[int, Any]] = []
    pos = skip(pos + 1)
    while not text.startswith("]", pos):
        if rows:
            if not text.startswith(",", pos):
                raise DataError(f"{path}:{line_of(pos)}: expected ',' or ']' between array elements")
            pos = skip(pos + 1)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        rows.append((line_of(pos), value))
        pos = skip(end)
    return rows


def _require(row: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    missing = [k for k in keys if not isinstance(row.get(k), str | list)]
    if missing:
        raise DataError(f"{where}: missing or non-text field(s) {', '.join(missing)}")
    return row


def gsm8k_gold(answer: str, where: str) -> str:
    """The number after the final ``####`` of a GSM8K answer, commas removed."""
    if "####" not in answer:
        raise DataError(f"{where}: the answer has no '#### <number>' line")
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not re.fullmatch(r"-?\d+(\.\d+)?", gold):
        raise DataError(f"{where}: the gold answer {gold!r} is not a number")
    return gold


def gsm8k_question(row: dict[str, Any], index: int, split: str, where: str) -> Question:
    _require(row, ("question", "answer"), where)
    solution = CALCULATOR.sub("", row["answer"].rsplit("####", 1)[0]).strip()
    return Question(f"gsm8k/{split}/{index}", row["question"].strip(), gsm8k_gold(row["answer"], where), (), solution)


def parse_aqua_options(options: Any, where: str) -> tuple[str, ...]:
    """AQuA options ``["A)32400", "B)6000", ...]`` -> option texts, checked to be lettered A, B, ..."""
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
        raise DataError(f"{where}: 'options' must be a list of 2 to 5 strings like 'A)12'")
    texts = []
    for letter, option in zip(LETTERS, options, strict=False):
        match = re.match(rf"\s*\(?{letter}\s*\)\s*(.*)", str(option), re.S | re.I)
        if match is None:
            raise DataError(f"{where}: option {option!r} does not start with '{letter})'")
        texts.append(match.group(1).strip())
    return tuple(texts)


def aqua_question(row: dict[str, Any], index: int, split: str, where: str) -> Question:
    _require(row, ("question", "options", "correct"), where)
    choices = parse_aqua_options(row["options"], where)
    gold = row["correct"].strip().upper()
    if gold not in LETTERS[: len(choices)]:
        raise DataError(f"{where}: 'correct' is {row['correct']!r}, not one of the option letters")
    return Question(f"aqua/{split}/{index}", row["question"].strip(), gold, choices, str(row.get("rationale", "")))


def parse_mathqa_options(options: str, where: str = "options") -> tuple[str, ...]:
    """MathQA options in either released form -> option texts in letter order.

    Plain: ``"a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these"``;
    list-shaped (66 test items): ``"['a ) 12', 'b ) 15', ...]"``. An option text may itself contain
    commas, so the plain form is cut at each expected ``, <next letter> )`` in order, not at commas.
    """
    text = options.strip()
    if text.startswith("["):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise DataError(f"{where}: list-shaped options {text[:40]!r}... do not parse") from exc
        if not isinstance(items, list | tuple):
            raise DataError(f"{where}: list-shaped options are not a list")
        return parse_aqua_options([str(item) for item in items], where)
    marks = []
    pos = 0
    for i, letter in enumerate(LETTERS.lower()):
        pattern = rf"^\s*{letter}\s*\)\s*" if i == 0 else rf"\s*,\s*{letter}\s*\)\s*"
        match = re.compile(pattern, re.I).search(text, pos)
        if match is None:
            break
        marks.append(match)
        pos = match.end()
    if len(marks) < 2:
        raise DataError(f"{where}: options {text[:40]!r} are not of the form 'a ) ... , b ) ...'")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return tuple(text[m.end() : end].strip() for m, end in zip(marks, ends, strict=True))


def mathqa_question(row: dict[str, Any], index: int, split: str, where: str) -> Question:
    # The local file renamed Problem/Rationale/correct; the hub keeps the original names.
    if isinstance(row, dict) and "Problem" in row:
        row = {"question": row["Problem"], "rationale": row.get("Rationale", ""), **row, "answer": row.get("correct")}
    _require(row, ("question", "options", "answer"), where)
    choices = parse_mathqa_options(row["options"], where)
    gold = row["answer"].strip().upper()
    if gold not in LETTERS[: len(choices)]:
        raise DataError(f"{where}: 'answer' is {row['answer']!r}, not one of the option letters")
    return Question(f"mathqa/{split}/{index}", row["question"].strip(), gold, choices, str(row.get("rationale", "")))


Parser = Callable[[dict[str, Any], int, str, str], Question]
PARSERS: dict[str, Parser] = {"gsm8k": gsm8k_question, "aqua": aqua_question, "mathqa": mathqa_question}


def load_questions(dataset: str, split: str, data: DataConfig) -> list[Question]:
    """All questions of (dataset, split): the local file under data.root, else the hub."""
    parse = PARSERS[dataset]
    path = sources.local_path(data, dataset, split)
    if path is not None:
        if not path.is_file():
            raise DataError(
                f"{path}: missing; point data.root at a folder holding {sources.LOCAL_FILES[(dataset, split)]}"
            )
        rows = numbered_json_array(path) if dataset == "mathqa" else sources.numbered_json_lines(path)
        return [parse(row, i, split, f"{path}:{line}") for i, (line, row) in enumerate(rows)]
    from datasets import load_dataset

    hub_id, name = HUB[dataset]
    hub_split = HUB_SPLITS.get((dataset, split), split)
    rows = load_dataset(hub_id, name, split=hub_split)
    return [parse(dict(row), i, split, f"{hub_id}[{hub_split}][{i}]") for i, row in enumerate(rows)]


def synthetic_questions(n: int, seed: int, split: str) -> list[Question]:
    """The project's arithmetic word problems (``rkuprune.data.synthetic``) as questions."""
    return [
        Question(
            f"synthetic/{split}/{seed}/{i}", p.question, str(p.answer), (), p.solution.rsplit("####", 1)[0].strip()
        )
        for i, p in enumerate(word_problems(n, seed, split))
    ]


# MathQA has no train or dev split under data.root, so few-shot MathQA uses these exemplars, written
# for this project in MathQA's style (lower case, spaced operators); none is a MathQA question.
MATHQA_EXEMPLARS = (
    Question(
        "mathqa/project/0",
        "a train 120 m long passes a telegraph pole in 6 seconds . what is the speed of the train in km / hr ?",
        "B",
        ("60", "72", "80", "90", "54"),
        "speed = 120 / 6 = 20 m / s . in km / hr : 20 * 18 / 5 = 72 km / hr .",
    ),
    Question(
        "mathqa/project/1",
        "the price of a lamp is raised by 20 % and then lowered by 10 % . what is the net change in its price ?",
        "A",
        ("8 % increase", "10 % increase", "2 % decrease", "12 % increase", "no change"),
        "new price = 1.2 * 0.9 = 1.08 times the old price , an increase of 8 % .",
    ),
    Question(
        "mathqa/project/2",
        "what is the simple interest on rs . 500 at 4 % per annum for 3 years ?",
        "B",
        ("rs . 50", "rs . 60", "rs . 40", "rs . 70", "rs . 80"),
        "simple interest = 500 * 4 * 3 / 100 = rs . 60 .",
    ),
    Question(
        "mathqa/project/3",
        "if 3 x + 7 = 22 , what is the value of x ?",
        "C",
        ("3", "4", "5", "6", "7"),
        "3 x = 22 - 7 = 15 , so x = 15 / 3 = 5 .",
    ),
)
