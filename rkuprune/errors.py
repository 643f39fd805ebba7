"""Errors a user can act on: each names the config field (or file) to change."""

from __future__ import annotations


class RkupruneError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(RkupruneError, ValueError):
    """A config value is wrong. The message starts with the field name and says what to change."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class PlanError(RkupruneError, ValueError):
    """A pruning plan is inconsistent with the model (names the layer)."""


class CheckpointError(RkupruneError, ValueError):
    """A saved pruned model does not match its plan (names the tensor)."""


class DataError(RkupruneError, ValueError):
    """A data file is missing or malformed (names the file and, where known, the line)."""
