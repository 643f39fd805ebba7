"""Side artifacts (the plan picture, caches, W&B): one that fails is a warning, logged and recorded in
results.json's ``warnings``, never a lost run. Warnings wait here until the run's record takes them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
_pending: list[str] = []
T = TypeVar("T")


def side_warning(message: str, logger: logging.Logger = log) -> None:
    """Log ``message`` (on ``logger``) and keep it for results.json."""
    logger.warning("%s", message)
    _pending.append(message)


def take_warnings() -> list[str]:
    """The warnings since the last call (the record writes them)."""
    taken = list(_pending)
    _pending.clear()
    return taken


@contextmanager
def side_artifact(what: str, logger: logging.Logger = log) -> Iterator[None]:
    """Run the block that writes ``what``; an ``OSError`` (disk full, read-only folder) becomes a warning."""
    try:
        yield
    except OSError as exc:
        side_warning(f"{what}: not written ({type(exc).__name__}: {exc}); the run goes on without it", logger)


def read_cache(path: Path, what: str, parse: Callable[[Any], T], logger: logging.Logger = log) -> T | None:
    """A JSON cache file's content through ``parse`` (which raises ValueError, TypeError or KeyError on
    content it cannot use), or None when the file is absent. A corrupt file (truncated, ``{}``, nested
    past the parser's depth) would otherwise fail every later run that reads it: it is named in a
    warning and None is returned, so the caller recomputes it and writes the file again."""
    if not path.is_file():
        return None
    try:
        return parse(json.loads(path.read_bytes().decode("utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}" if str(exc) else type(exc).__name__
        side_warning(f"{what} {path} is corrupt ({reason}); recomputing it", logger)
        return None
