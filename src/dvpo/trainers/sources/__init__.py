"""Advantage sources by name: the one place where the RL algorithms differ.

`dvpo rl --algo NAME`, `RlConfig.algo`'s choices and `dvpo compare`'s methods all read `SOURCES`.
Each entry points at a class implementing `dvpo.trainers.sources.base.AdvantageSource`; it is imported
only when a run uses it, so this module stays free of heavy imports (`dvpo --help` is instant).
Adding an algorithm is one module with one class and one line here (docs/rl.md shows RLOO's diff).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple


class Registration(NamedTuple):
    target: str   # "module:Class"
    display: str  # the name reports print


SOURCES: dict[str, Registration] = {
    "dvpo": Registration("dvpo.trainers.sources.dvpo:DvpoSource", "DVPO"),
    "ppo": Registration("dvpo.trainers.sources.ppo:PpoSource", "PPO"),
    "remax": Registration("dvpo.trainers.sources.remax:RemaxSource", "ReMax"),
    "grpo": Registration("dvpo.trainers.sources.grpo:GrpoSource", "GRPO"),
    "rloo": Registration("dvpo.trainers.sources.rloo:RlooSource", "RLOO"),
}
SOURCE_NAMES = tuple(SOURCES)


def source_class(name: str):
    """The registered advantage source class called `name`; ValueError naming the choices otherwise."""
    if name not in SOURCES:
        raise ValueError(f"unknown RL algorithm {name!r} (choose from {', '.join(SOURCE_NAMES)})")
    module, attribute = SOURCES[name].target.split(":")
    return getattr(importlib.import_module(module), attribute)
