"""Atomic JSONL writing: a crashed run never leaves a half-written file that looks complete."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write `rows` to `path` via a temporary file and a rename; returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count
