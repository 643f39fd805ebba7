"""Arithmetic word problems written by the project: offline calibration and an offline benchmark.

Problems come from templates with seeded numbers. Train and test never share a problem: the first
number in a train question is odd and in a test question even, whatever the seeds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class WordProblem:
    question: str
    answer: int
    solution: str  # step-by-step, ending with "#### <answer>" like GSM8K


Template = Callable[[random.Random, int], WordProblem]

NAMES = ("Ava", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jo", "Kemal", "Lena")
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells")


def _buy_and_give(rng: random.Random, a: int) -> WordProblem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    b, c = rng.randint(2, 30), rng.randint(1, a)
    total = a + b - c
    return WordProblem(
        f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to a friend. "
        f"How many {item} does {name} have now?",
        total,
        f"{name} has {a} + {b} = {a + b} {item} after buying. After giving {c} away, "
        f"{name} has {a + b} - {c} = {total}.\n#### {total}",
    )


def _price(rng: random.Random, a: int) -> WordProblem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    price, paid_extra = rng.randint(2, 12), rng.randint(1, 20)
    cost = a * price
    total = cost + paid_extra
    return WordProblem(
        f"{name} buys {a} {item} at ${price} each and pays ${paid_extra} for a bag. How many dollars does {name} spend?",
        total,
        f"The {item} cost {a} * {price} = {cost} dollars. With the bag: {cost} + {paid_extra} = {total}.\n#### {total}",
    )


def _share(rng: random.Random, a: int) -> WordProblem:
    item = rng.choice(ITEMS)
    people = rng.randint(2, 9)
    boxes = a
    per_box = people * rng.randint(2, 9)
    each = boxes * per_box // people
    return WordProblem(
        f"There are {boxes} boxes with {per_box} {item} in each box. The {item} are shared equally among "
        f"{people} children. How many {item} does each child get?",
        each,
        f"There are {boxes} * {per_box} = {boxes * per_box} {item}. Each child gets "
        f"{boxes * per_box} / {people} = {each}.\n#### {each}",
    )


def _weeks(rng: random.Random, a: int) -> WordProblem:
    name = rng.choice(NAMES)
    per_day, days, weeks = a, rng.randint(2, 7), rng.randint(2, 6)
    total = per_day * days * weeks
    return WordProblem(
        f"{name} reads {per_day} pages a day, {days} days a week. How many pages does {name} read in {weeks} weeks?",
        total,
        f"Each week {name} reads {per_day} * {days} = {per_day * days} pages. In {weeks} weeks: "
        f"{per_day * days} * {weeks} = {total}.\n#### {total}",
    )


def _difference(rng: random.Random, a: int) -> WordProblem:
    first, second = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    more = rng.randint(1, 40)
    total = a + a + more
    return WordProblem(
        f"{first} has {a} {item}. {second} has {more} more {item} than {first}. How many {item} do they have together?",
        total,
        f"{second} has {a} + {more} = {a + more} {item}. Together: {a} + {a + more} = {total}.\n#### {total}",
    )


TEMPLATES: tuple[Template, ...] = (_buy_and_give, _price, _share, _weeks, _difference)


def word_problems(n: int, seed: int, split: str) -> list[WordProblem]:
    """``n`` problems for ``split`` ('train' or 'test'), deterministic in (seed, split)."""
    if split not in {"train", "test"}:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"rkuprune-synthetic-{split}-{seed}")
    parity = 1 if split == "train" else 0
    problems = []
    for i in range(n):
        first = 2 * rng.randint(1, 30) + parity
        problems.append(TEMPLATES[i % len(TEMPLATES)](rng, first))
    return problems
