"""Side artifacts (the plan picture, caches, W&B): one that fails is a warning, logged and recorded in
results.json's ``warnings``, never a lost run. Warnings wait here until the run's record takes them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
_pending: list[str] = []


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
