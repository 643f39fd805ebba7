"""Atomic writes: a reader (or a crash) never sees half a file. Files get the modes a plain ``open``
would give (the umask decides), not mkstemp's owner-only 600, so shared cluster folders stay readable.
Non-finite floats are written as ``null`` (strict JSON); records flag them separately."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def umask_mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for folders) less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def follow_umask(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes the umask allows: files written by other libraries'
    own writes come out owner-only otherwise (safetensors 0.8's ``save_file`` writes 0600 whatever the
    umask), and collaborators cannot load a shared model."""
    folder.chmod(umask_mode(0o777))
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(umask_mode(0o777 if path.is_dir() else 0o666))


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode(0o666))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_or_none(data: Any) -> Any:
    """``data`` with every NaN or infinity replaced by None, so that it is strict JSON."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: finite_or_none(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite_or_none(value) for value in data]
    return data


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(finite_or_none(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")
