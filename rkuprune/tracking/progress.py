"""Progress over long loops: a tqdm bar with an ETA on a terminal, and log lines with the same ETA when
the output is a file (Hydra's job log, a SLURM log), so a run that scores for minutes is never silent."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOG_EVERY_S = 30.0


def progress(items: Sequence[T], desc: str, log: logging.Logger, unit: str = "batch") -> Iterator[T]:
    """Yield ``items``; show a bar on a terminal, else log ``desc: i/n done, ETA`` at most every 30 s."""
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, unit=unit, leave=False)
        return
    start = last = time.perf_counter()
    for done, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= LOG_EVERY_S and done < len(items):
            eta = (now - start) / done * (len(items) - done)
            log.info("%s: %d/%d done, ETA %.0f s", desc, done, len(items), eta)
            last = now
