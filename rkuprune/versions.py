"""Versions of the packages that decide a result, recorded with every run and saved model."""

from __future__ import annotations

import platform
from importlib import metadata

_PACKAGES = ("rkuprune", "torch", "transformers", "lm_eval", "datasets", "hydra-core", "wandb")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
