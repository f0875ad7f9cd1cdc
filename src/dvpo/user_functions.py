"""Python functions a user names on the command line ("path/to/file.py:name" or "module:name"), or passes to a
Python trainer, to score completions: reward functions (`--reward-fn`, a training signal) and monitoring scores
(`--score-fn`).
They follow TRL's `reward_funcs` convention, so a function written for TRL works here unchanged."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path

import torch

from dvpo.errors import ConfigError, RewardFunctionError


class RewardFunction:
    """A user's Python function that scores completions, called as TRL calls its `reward_funcs`:
    `fn(prompts=[...], completions=[...], **columns) -> list[float]`, where `columns` holds every other
    field of the prompt file's rows, one list per field. Loaded from "path/to/file.py:name" or "module:name".
    `option` names the command-line option it came from, for errors."""

    def __init__(self, spec: str, option: str = "--reward-fn"):
        self.spec, self.option = spec, option
        self.fn = load_function(spec, option)

    def __call__(self, prompts: list, completions: list[str], columns: list[dict]) -> torch.Tensor:
        keys = sorted({k for row in columns for k in row})
        extra = {k: [row.get(k) for row in columns] for k in keys} if columns else {}
        try:
            values = self.fn(prompts=list(prompts), completions=list(completions), **extra)
        except Exception as error:  # the user's code: any failure stops the step, named
            raise RewardFunctionError(f"{self.option} function {self.spec} raised {type(error).__name__}: "
                                      f"{error}") from error
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise RewardFunctionError(f"{self.option} function {self.spec} must return a list of numbers, one per "
                                      f"completion; got {type(values).__name__}: {str(values)[:200]}") from None
        if len(values) != len(completions):
            raise RewardFunctionError(f"{self.option} function {self.spec} returned {len(values)} value(s) for "
                                      f"{len(completions)} completions")
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise RewardFunctionError(f"{self.option} function {self.spec} returned a non-finite value "
                                      f"({values[bad[0]]}) for completion {bad[0]}: {str(completions[bad[0]])[:200]!r}")
        return torch.tensor(values, dtype=torch.float32)


PASSED_PREFIX = "python:"
_PASSED: dict[str, object] = {}
"""Functions handed to a Python trainer (`dvpo.GRPOTrainer(reward_funcs=[fn])`), under the spec that stands
for them in the run's config: "python:<name>#<number>". They live in this process only."""


def register_function(fn) -> str:
    """The spec under which `load_function` finds a callable passed in from Python (same function, same spec)."""
    if isinstance(fn, str):
        return fn
    if not callable(fn):
        raise ConfigError(f"expected a function, got {type(fn).__name__}: {fn!r}")
    spec = f"{PASSED_PREFIX}{getattr(fn, '__name__', type(fn).__name__)}#{id(fn)}"
    _PASSED[spec] = fn
    return spec


@functools.cache
def load_function(spec: str, option: str = "--reward-fn"):
    """The callable named by "path/to/file.py:name" or "module:name"; ConfigError saying what is wrong.
    Cached: the run's checks and its sources ask for the same function, and a user's file runs once."""
    if spec.startswith(PASSED_PREFIX):
        if spec not in _PASSED:
            raise ConfigError(f"{option} {spec!r} was a function passed to a Python trainer in another process; "
                              "pass it to the trainer again, or name it as path/to/file.py:name")
        return checked_signature(_PASSED[spec], spec, option)
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ConfigError(f"{option} {spec!r}: expected path/to/file.py:name or module:name")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"{option} {spec!r}: no file {path}")
        module_name = f"dvpo_reward_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            raise ConfigError(f"{option} {spec!r}: importing {path} raised {type(error).__name__}: {error}") \
                from error
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise ConfigError(f"{option} {spec!r}: cannot import module {where!r} ({error})") from error
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{option} {spec!r}: {where} has no function {name!r}")
    return checked_signature(fn, spec, option)


def checked_signature(fn, spec: str, option: str):
    """`fn` itself, once it is known to take TRL's reward_funcs arguments."""
    parameters = inspect.signature(fn).parameters
    takes_keywords = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    missing = [arg for arg in ("prompts", "completions") if arg not in parameters and not takes_keywords]
    if missing:
        raise ConfigError(f"{option} {spec!r}: the function must accept {' and '.join(missing)} (TRL's "
                          "reward_funcs convention: fn(prompts, completions, **kwargs) -> list[float])")
    return fn
