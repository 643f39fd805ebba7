"""Where text and question data come from: a local ``data.root`` (docs/design.md section 6 layout), the
Python standard library (``pydoc``), or the Hugging Face hub when it is reachable.

Every corpus has named splits; evaluation reads ``test``/``validation`` splits and calibration reads
``train`` splits, so calibration can refuse (rather than silently use) an evaluation split.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkuprune.errors import ConfigError, DataError


@dataclass
class DataConfig:
    """``data`` group: ``root`` is a local folder with gsm8k/, aqua/, mathqa/, wikitext2/, c4/ (and alpaca/)."""

    root: str | None = None


LOCAL_FILES = {
    ("wikitext2", "test"): "wikitext2/wiki.test.raw",
    ("wikitext2", "train"): "wikitext2/wiki.train.raw",
    ("c4", "validation"): "c4/c4_validation_2k.jsonl",
    ("gsm8k", "train"): "gsm8k/train.jsonl",
    ("gsm8k", "test"): "gsm8k/test.jsonl",
    ("aqua", "dev"): "aqua/dev.json",
    ("aqua", "test"): "aqua/test.json",
    ("mathqa", "test"): "mathqa/test.json",
    ("alpaca", "train"): "alpaca/alpaca_data_cleaned.json",  # optional: the hub is used when it is absent
}
# The local C4 file is one validation subset: its first documents are the evaluation text, the rest
# may calibrate, so the two never overlap.
C4_EVAL_DOCS = 1100


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "0").lower() in {"1", "true", "yes"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def local_path(data: DataConfig, dataset: str, split: str) -> Path | None:
    """The local file for (dataset, split) under data.root, or None when data.root is unset."""
    if not data.root:
        return None
    return Path(data.root).expanduser() / LOCAL_FILES[(dataset, split)]


def require_available(data: DataConfig, dataset: str, split: str, field: str) -> None:
    """Fail early (before any model is loaded) when the data cannot be had without the network."""
    path = local_path(data, dataset, split)
    if path is not None:
        if not path.is_file():
            raise ConfigError(
                "data.root", f"{path} is missing (needed by {field}); point data.root at a folder with it"
            )
        return
    if hub_offline():
        raise ConfigError(
            "data.root",
            f"{field} needs {dataset}/{split} but the hub is offline and data.root is unset; "
            f"set data.root to a folder holding {LOCAL_FILES[(dataset, split)]} (layout: docs/design.md section 6)",
        )


def read_utf8(path: Path) -> str:
    """A data file's text with universal newlines (as ``read_text``); bytes that are not UTF-8 are a
    DataError naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def numbered_json_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSON Lines file, so errors can name the line."""
    rows = []
    with io.StringIO(read_utf8(path)) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file; a line that is not an object is a DataError naming it."""
    rows = []
    for number, row in numbered_json_lines(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line")
        rows.append(row)
    return rows


def pydoc_topics(split: str) -> dict[str, str]:
    """CPython's documentation topics (always available offline): alternate topics go to test and train."""
    from pydoc_data.topics import topics

    parity = 0 if split == "test" else 1
    return {name: topics[name].strip() for i, name in enumerate(sorted(topics)) if i % 2 == parity}


def pydoc_text(split: str) -> str:
    return "\n\n".join(pydoc_topics(split).values())


def wikitext2_text(data: DataConfig, split: str) -> str:
    """WikiText-2 raw rows joined with blank lines (the GPTQ/SparseGPT/Wanda protocol)."""
    path = local_path(data, "wikitext2", split)
    if path is not None:
        rows = ["" if not line.strip() else line + "\n" for line in read_utf8(path).split("\n")]
    else:
        from datasets import load_dataset

        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    return "\n\n".join(rows)


def c4_documents(data: DataConfig, split: str) -> list[str]:
    """C4 ``en`` documents: ``validation`` = evaluation documents, ``train`` = calibration documents."""
    path = local_path(data, "c4", "validation")
    if path is not None:
        docs = [row["text"] for row in read_jsonl(path)]
        return docs[:C4_EVAL_DOCS] if split == "validation" else docs[C4_EVAL_DOCS:]
    from datasets import load_dataset

    files = {
        "validation": "en/c4-validation.00000-of-00008.json.gz",
        "train": "en/c4-train.00000-of-01024.json.gz",
    }
    docs = load_dataset("allenai/c4", data_files={split: files[split]}, split=split)["text"]
    return docs[:C4_EVAL_DOCS] if split == "validation" else docs


def gsm8k_rows(data: DataConfig, split: str) -> list[dict[str, str]]:
    """GSM8K rows ``{"question", "answer"}`` (answer ends with ``#### n``)."""
    path = local_path(data, "gsm8k", split)
    if path is not None:
        rows = read_jsonl(path)
        for number, row in enumerate(rows, start=1):
            if "question" not in row or "answer" not in row:
                raise DataError(f"{path}:{number}: expected keys 'question' and 'answer'")
        return rows
    from datasets import load_dataset

    return list(load_dataset("openai/gsm8k", "main", split=split))
