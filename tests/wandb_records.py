"""Read the summary an offline W&B run wrote (wandb >= 0.19 ships no Python reader for .wandb files).

The file is a 7-byte header followed by LevelDB-log records (32 KiB blocks; each chunk has a 4-byte
CRC, a 2-byte length and a 1-byte type: 1 full, 2 first, 3 middle, 4 last) holding protobuf Records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7


def _chunks(data: bytes) -> Iterator[bytes]:
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
        elif kind == 0 and length == 0:
            pos += left - HEADER
    return


def offline_summary(wandb_dir: Path) -> dict[str, Any]:
    """Merge every summary update of the one offline run under ``wandb_dir``."""
    (run_file,) = list(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    summary: dict[str, Any] = {}
    for chunk in _chunks(run_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def offline_history(wandb_dir: Path) -> list[dict[str, Any]]:
    """Every ``run.log`` row of the one offline run under ``wandb_dir``, in order."""
    (run_file,) = list(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    rows = []
    for chunk in _chunks(run_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows
