"""Errors a user can act on: each names the config field (or file) to change."""

from __future__ import annotations

from collections.abc import Collection


class RkupruneError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(RkupruneError, ValueError):
    """A config value is wrong. The message starts with the field name and says what to change."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def check_choice(field: str, value: object, choices: Collection[str]) -> None:
    """Raise the one-line ``ConfigError`` naming ``field`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(field, f"'{value}' is not one of {', '.join(choices)}")


def check_context(field: str, seqlen: int, context: int | None) -> None:
    """A window longer than the model's context (``max_position_embeddings``; None: unknown) would be
    scored past it, silently: refuse it, naming ``field`` (calibration and benchmark seqlens alike)."""
    if context is not None and seqlen > context:
        raise ConfigError(field, f"{seqlen} exceeds the model's context of {context} tokens")


class PlanError(RkupruneError, ValueError):
    """A pruning plan is inconsistent with the model (names the layer)."""


class CheckpointError(RkupruneError, ValueError):
    """A saved pruned model does not match its plan (names the tensor)."""


class DataError(RkupruneError, ValueError):
    """A data file is missing or malformed (names the file and, where known, the line)."""
