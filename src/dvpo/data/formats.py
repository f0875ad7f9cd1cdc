"""Load and validate data rows, with TRL's field names, from JSONL, a `datasets` folder or the Hub.

Every row is checked on load, so bad data fails at once with its file, line and field instead
of as a shape error deep inside a training step. Nothing is dropped: a loader returns every
row or raises (blank JSONL lines hold no row and are skipped).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvpo.errors import DataError

ROLES = ("system", "user", "assistant")
JSONL_SUFFIXES = (".jsonl", ".json")
# Suffixes that mark a source as a local file even when it does not exist (no Hub fallback).
_FILE_SUFFIXES = (*JSONL_SUFFIXES, ".parquet", ".csv", ".arrow", ".txt")


@dataclass(frozen=True)
class Kind:
    """The fields of one row kind; `alternative`, when present, replaces all `required` ones."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    alternative: str | None = None
    may_be_empty: tuple[str, ...] = ()  # a model may legitimately generate an empty response


KINDS: dict[str, Kind] = {
    "sft": Kind(("prompt", "completion"), alternative="messages"),
    "rated": Kind(("prompt", "completion", "score"), optional=("policy",)),
    "preference": Kind(("prompt", "chosen", "rejected")),
    "prompts": Kind(("prompt",)),
    "generations": Kind(("prompt", "completion"), optional=("score",), may_be_empty=("completion",)),
}


class _Problem(Exception):
    """Raised by the field checks; `validate_row` adds the source and line."""

    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.field, self.problem = field, problem


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_text(value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise _Problem(field, f"must be a string, got {_type_name(value)}")
    if not value.strip():
        raise _Problem(field, "must not be empty or whitespace only")


def _check_messages(value: Any, field: str, roles: tuple[str, ...] = ROLES) -> None:
    if not isinstance(value, list) or not value:
        raise _Problem(field, f"must be a non-empty list of messages, got {_type_name(value)}")
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise _Problem(where, f"must be an object with 'role' and 'content', got {_type_name(message)}")
        if message.get("role") not in roles:
            raise _Problem(f"{where}.role", f"must be one of {', '.join(roles)}; got {message.get('role')!r}")
        _check_text(message.get("content"), f"{where}.content")


def _check_text_or_messages(value: Any, field: str, roles: tuple[str, ...]) -> None:
    if isinstance(value, list):
        _check_messages(value, field, roles)
    elif isinstance(value, str):
        _check_text(value, field)
    else:
        raise _Problem(field, f"must be a string or a list of messages, got {_type_name(value)}")


def _check_prompt(value: Any, field: str) -> None:
    _check_text_or_messages(value, field, ROLES)


def _check_reply(value: Any, field: str) -> None:
    # A conversational reply holds assistant turns only, so all of it can be masked as response.
    _check_text_or_messages(value, field, ("assistant",))


def _check_conversation(value: Any, field: str) -> None:
    _check_messages(value, field)
    if not any(m["role"] == "assistant" for m in value):
        raise _Problem(field, "needs at least one assistant message")


def _check_score(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Problem(field, f"must be a finite number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise _Problem(field, f"must be a finite number, got {value}")


_CHECKS = {
    "prompt": _check_prompt,
    "completion": _check_reply,
    "chosen": _check_reply,
    "rejected": _check_reply,
    "messages": _check_conversation,
    "score": _check_score,
    "policy": _check_text,
}


def validate_row(row: Any, kind: str, source: Any = "<rows>", line: int | None = None) -> dict:
    """Check one row of `kind`; returns the row itself (extra fields untouched) or raises DataError.

    A null value counts as absent: `datasets` fills fields missing from some rows with None.
    """
    spec = _kind(kind)
    if not isinstance(row, dict):
        raise DataError(source, line, None, f"expected a JSON object, got {_type_name(row)}")
    use_alternative = spec.alternative is not None and row.get(spec.alternative) is not None
    required = (spec.alternative,) if use_alternative else spec.required
    try:
        for field in required:
            if row.get(field) is None:
                hint = f" (or {spec.alternative!r})" if spec.alternative else ""
                raise _Problem(field, f"missing; {kind} rows need {', '.join(map(repr, required))}{hint}")
            if not (field in spec.may_be_empty and row[field] == ""):
                _CHECKS[field](row[field], field)
        for field in spec.optional:
            if row.get(field) is not None:
                _CHECKS[field](row[field], field)
    except _Problem as p:
        raise DataError(source, line, p.field, p.problem) from None
    return row


def load_rows(source: str | os.PathLike, kind: str, split: str = "train") -> list[dict]:
    """Load and validate every row of `kind` from a JSONL file, a `datasets` folder or a Hub name.

    `split` picks the split of a saved DatasetDict or a Hub dataset. A missing local path is an
    error here rather than a Hub lookup, so a typo never turns into a download attempt.
    """
    _kind(kind)
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix not in JSONL_SUFFIXES:
            problem = "unsupported file type; expected JSON lines (.jsonl/.json) or a datasets folder"
            raise DataError(name, None, None, problem)
        rows = _read_jsonl(path, kind, name)
    elif path.is_dir():
        rows = _validate_dataset(*_load_from_disk(path, name, split), kind)
    elif _looks_local(name):
        raise DataError(name, None, None, "no such file or folder")
    else:
        import datasets

        rows = _validate_dataset(datasets.load_dataset(name, split=split), f"{name}[{split}]", kind)
    if not rows:
        raise DataError(name, None, None, "no rows")
    return rows


def row_kind(rows: list[dict]) -> str:
    """'preference' when the first row has a `chosen` field, else 'rated'."""
    return "preference" if rows[0].get("chosen") is not None else "rated"


def load_rated_or_preference_rows(source: str | os.PathLike, split: str = "train") -> list[dict]:
    """Rated or preference rows, the kind told by the first row, each row validated as that kind."""
    return load_rows(source, row_kind(load_rows(source, "prompts", split=split)), split=split)


def load_scored_rows(source: str | os.PathLike, split: str = "train") -> list[dict]:
    """Rated rows as given; preference rows as two rated rows each, the chosen response scored +1 and the
    rejected one -1 (the DVPO authors' `process_preference`), so a GVM trains and is evaluated on TRL's
    preference datasets too."""
    rows = load_rated_or_preference_rows(source, split)
    if row_kind(rows) == "rated":
        return rows
    return [{"prompt": row["prompt"], "completion": row[side], "score": score}
            for row in rows for side, score in (("chosen", 1.0), ("rejected", -1.0))]


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown row kind {kind!r}; expected one of {', '.join(KINDS)}")
    return KINDS[kind]


def _read_jsonl(path: Path, kind: str, name: str) -> list[dict]:
    rows = []
    with open(path, "rb") as f:  # bytes, so a bad encoding is reported with its line number
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                problem = f"not valid UTF-8 ({e.reason} at byte {e.start})"
                raise DataError(name, number, None, problem) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(name, number, None, f"malformed JSON: {e.msg} (column {e.colno})") from None
            rows.append(validate_row(row, kind, name, number))
    return rows


def _load_from_disk(path: Path, name: str, split: str):
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(name, None, None, "a folder, but not one saved by datasets' save_to_disk") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(name, None, None, f"no split {split!r}; it has {', '.join(data) or 'none'}")
        return data[split], f"{name}[{split}]"
    return data, name


def _validate_dataset(data, name: str, kind: str) -> list[dict]:
    return [validate_row(row, kind, name, number) for number, row in enumerate(data, 1)]


def _looks_local(name: str) -> bool:
    """Hub ids are `name` or `owner/name`; any other shape, or one under an existing folder, is local."""
    path = Path(name).expanduser()
    return (
        path.suffix in _FILE_SUFFIXES
        or path.is_absolute()
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or (len(path.parts) > 1 and path.parent.exists())
    )
