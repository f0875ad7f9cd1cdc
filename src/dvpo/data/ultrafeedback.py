"""Convert UltraFeedback (`openbmb/UltraFeedback`) into the paper's Base-setting data files.

Each UltraFeedback row is one `instruction` with (usually four) `completions`, each from a named
model and rated by GPT-4 on four aspects. The rated rows keep the model name as `policy`, the
GVM's tau pool. Prompts are split once, so the sets are disjoint: a held-out test fraction
first, then the paper's 30% SFT / 50% reward-value learning / 20% RL on the rest. The file names
match `dvpo lab make-data`, so every later stage takes either folder.

Completions that cannot be used (empty response, no score, an "N/A" rating) and prompts left
with none are skipped and counted in the log and the manifest; a malformed row raises DataError.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dvpo.errors import ConfigError
from dvpo.data.formats import JSONL_SUFFIXES, _load_from_disk, _looks_local
from dvpo.errors import DataError
from dvpo.data.jsonl import write_jsonl

logger = logging.getLogger(__name__)

ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
SCORES = ("fine-grained", "overall", *ASPECTS)
"""`fine-grained` is the dataset's `fine-grained_score`, the mean of the four aspect ratings
(1-5, "N/A" left out); `overall` is the critique's `overall_score` (1-10); an aspect name takes
that aspect's rating alone. The DVPO paper does not say which one it trains on."""
SPLIT = (("sft", 0.3), ("rated", 0.5), ("rl", 0.2))
FILES = {
    "sft": "sft.jsonl",
    "rated": "rated.jsonl",
    "prompts": "prompts.jsonl",
    "test_prompts": "test_prompts.jsonl",
    "rated_test": "rated_test.jsonl",
}


def convert_ultrafeedback(source: str | os.PathLike, out_dir: str | Path, score: str = "fine-grained", seed: int = 0,
                          test_fraction: float = 0.02, split: str = "train") -> dict[str, Path]:
    """Write sft, rated, prompts, test_prompts and rated_test JSONL plus manifest.json into `out_dir`.

    Output is a function of the input rows, `score`, `seed` and `test_fraction` alone.
    """
    if score not in SCORES:
        raise ConfigError(f"--score must be one of {', '.join(SCORES)}; got {score!r}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"--test-fraction must be in (0, 1); got {test_fraction}")
    name = os.fspath(source)
    completions = Counter(dict.fromkeys(("empty_response", "missing_score", "rating_na"), 0))
    rated, skipped_prompts, duplicates = _collect(name, split, score, completions)
    sets = _split_prompts(list(rated), seed, test_fraction, name)

    files = {
        "sft": [_best(rated[p]) for p in sets["sft"]],
        "rated": [row for p in sets["rated"] for row in rated[p]],
        "prompts": [{"prompt": p} for p in sets["rl"]],
        "test_prompts": [{"prompt": p} for p in sets["test"]],
        "rated_test": [row for p in sets["test"] for row in rated[p]],
    }
    out = Path(out_dir)
    paths = {kind: out / FILES[kind] for kind in files}
    counts = {kind: write_jsonl(paths[kind], rows) for kind, rows in files.items()}
    manifest = {
        "source": name,
        "score": score,
        "seed": seed,
        "test_fraction": test_fraction,
        "split": dict(SPLIT),
        "files": FILES,
        "counts": counts,
        "prompt_counts": {key: len(prompts) for key, prompts in sets.items()},
        "duplicate_instructions_merged": duplicates,
        "skipped_prompts": skipped_prompts,
        "skipped_completions": dict(completions),
    }
    paths["manifest"] = out / "manifest.json"
    _write_json(paths["manifest"], manifest)
    logger.info("ultrafeedback %s -> %s: %s rows; prompts %s; skipped completions: %s; skipped prompts: %s",
                name, out, _fmt(counts), _fmt(manifest["prompt_counts"]),
                _fmt(manifest["skipped_completions"]), _fmt(manifest["skipped_prompts"]))
    return paths


def _collect(name: str, split: str, score: str, skipped: Counter) -> tuple[dict[str, list[dict]], dict, int]:
    """(rated rows by prompt, skipped prompts by reason, rows merged into an earlier same instruction)."""
    rated: dict[str, list[dict]] = {}
    seen: set[str] = set()
    empty = duplicates = 0
    for where, line, row in _raw_rows(name, split):
        prompt, rows = _parse_row(row, score, where, line, skipped)
        if prompt is None:
            empty += 1
            continue
        duplicates += prompt in seen
        seen.add(prompt)
        if rows:
            rated.setdefault(prompt, []).extend(rows)
    return rated, {"empty_instruction": empty, "no_usable_completion": len(seen) - len(rated)}, duplicates


def _parse_row(row: Any, score: str, where: str, line: int, skipped: Counter) -> tuple[str | None, list[dict]]:
    """(instruction, its usable rated rows); None for a blank instruction, DataError for a malformed row."""
    if not isinstance(row, dict):
        raise DataError(where, line, None, f"expected a JSON object, got {_type_name(row)}")
    prompt, completions = row.get("instruction"), row.get("completions")
    if not isinstance(prompt, str):
        raise DataError(where, line, "instruction", f"must be a string, got {_type_name(prompt)}")
    if not isinstance(completions, list):
        raise DataError(where, line, "completions", f"must be a list of completions, got {_type_name(completions)}")
    if not prompt.strip():
        return None, []
    rows = []
    for i, completion in enumerate(completions):
        field = f"completions[{i}]"
        if not isinstance(completion, dict):
            raise DataError(where, line, field, f"must be an object, got {_type_name(completion)}")
        response, model = completion.get("response"), completion.get("model")
        if not isinstance(response, str):
            raise DataError(where, line, f"{field}.response", f"must be a string, got {_type_name(response)}")
        if not isinstance(model, str) or not model.strip():
            raise DataError(where, line, f"{field}.model", f"must be a non-empty string, got {model!r}")
        value = "empty_response" if not response.strip() else _score(completion, score, where, line, field)
        if isinstance(value, str):
            skipped[value] += 1
            continue
        rows.append({"prompt": prompt, "completion": response, "score": value, "policy": model})
    return prompt, rows


def _score(completion: dict, score: str, where: str, line: int, field: str) -> float | str:
    """The chosen score as a float, or the reason it is missing ("missing_score", "rating_na")."""
    if score in ("fine-grained", "overall"):
        key = f"{score}_score"
        return _number(completion.get(key), where, line, f"{field}.{key}")
    annotations = completion.get("annotations")
    if not isinstance(annotations, dict):
        raise DataError(where, line, f"{field}.annotations", f"must be an object of aspects, got {_type_name(annotations)}")
    aspect = annotations.get(score)
    if aspect is None:
        return "missing_score"
    if not isinstance(aspect, dict):
        raise DataError(where, line, f"{field}.annotations.{score}", f"must be an object with 'Rating', got {_type_name(aspect)}")
    rating = aspect.get("Rating")
    if isinstance(rating, str) and rating.strip().upper() == "N/A":
        return "rating_na"
    try:
        rating = float(rating) if isinstance(rating, str) else rating
    except ValueError:
        raise DataError(where, line, f"{field}.annotations.{score}.Rating", f"must be a number or 'N/A', got {rating!r}") from None
    return _number(rating, where, line, f"{field}.annotations.{score}.Rating")


def _number(value: Any, where: str, line: int, field: str) -> float | str:
    """A finite float; null and NaN (how the dataset marks an unrated completion) are "missing_score"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing_score"
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isinf(value):
        raise DataError(where, line, field, f"must be a number, got {value!r}")
    return float(value)


def _best(rows: list[dict]) -> dict:
    """The SFT row of a prompt: its highest-scored completion (the first one on a tie)."""
    best = max(rows, key=lambda r: r["score"])
    return {"prompt": best["prompt"], "completion": best["completion"]}


def _split_prompts(prompts: list[str], seed: int, test_fraction: float, name: str) -> dict[str, list[str]]:
    """Disjoint prompt sets: `test` first, then the paper's 30/50/20 of the rest, from one seeded shuffle."""
    order = list(prompts)
    random.Random(f"ultrafeedback-split-{seed}").shuffle(order)
    n_test = round(len(order) * test_fraction)
    rest = len(order) - n_test
    sizes = {"test": n_test, "sft": round(rest * SPLIT[0][1]), "rated": round(rest * SPLIT[1][1])}
    sizes["rl"] = rest - sizes["sft"] - sizes["rated"]
    if min(sizes.values()) < 1:
        raise DataError(name, None, None, f"{len(order)} usable prompts are too few to fill every set "
                        f"(test, sft, rated, rl would get {', '.join(map(str, sizes.values()))})")
    sets, start = {}, 0
    for key, size in sizes.items():
        sets[key], start = order[start:start + size], start + size
    return sets


def _raw_rows(name: str, split: str) -> Iterator[tuple[str, int, Any]]:
    """(source name, line or row number, row) from a JSONL file, a `datasets` folder or a Hub name."""
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix not in JSONL_SUFFIXES:
            raise DataError(name, None, None, "unsupported file type; expected JSON lines (.jsonl/.json) or a datasets folder")
        yield from _jsonl_rows(path, name)
        return
    if path.is_dir():
        data, where = _load_from_disk(path, name, split)
    elif _looks_local(name):
        raise DataError(name, None, None, "no such file or folder")
    else:
        import datasets

        data, where = datasets.load_dataset(name, split=split), f"{name}[{split}]"
    for number, row in enumerate(data, 1):
        yield where, number, row


def _jsonl_rows(path: Path, name: str) -> Iterator[tuple[str, int, Any]]:
    """Parsed JSON lines with their line numbers, read one at a time (the full set is ~1 GB)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(name, number, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                continue
            try:
                yield name, number, json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(name, number, None, f"malformed JSON: {e.msg} (column {e.colno})") from None


def _write_json(path: Path, data: dict) -> None:
    """Atomic, like write_jsonl: a crashed run never leaves a manifest that looks complete."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fmt(counts: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items())


def run_ultrafeedback(cfg) -> dict[str, Path]:
    """CLI entry: `dvpo data ultrafeedback`."""
    return convert_ultrafeedback(cfg.data, cfg.out, score=cfg.score, seed=cfg.seed,
                                 test_fraction=cfg.test_fraction, split=cfg.split)
