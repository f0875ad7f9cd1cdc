"""The settings of every stage as YAML, one folder per recipe (also at configs/recipes/ in the repository):
`small` for the lab's ~2M-parameter models trained from scratch, `smollm2` for the pretrained
SmolLM2-135M-Instruct with LoRA (both with a file for every stage the lab trains), and `authors` for the two
stages the DVPO authors' code has (gvm, rl). `dvpo <stage> --config configs/recipes/small/<stage>.yaml` trains a
stage exactly as the demo does. Kept free of heavy imports: the API's configs read recipes too."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from dvpo.options import apply_overrides

RECIPE_ROOT = Path(__file__).parent
RECIPES = RECIPE_ROOT / "small"
RECIPE_NAMES = ("small", "smollm2")  # the lab recipes: a file for every stage
CATALOG_RECIPES = {"smollm2-135m-instruct": "smollm2"}  # a catalog model's own recipe (`--recipe auto`)


def recipe_file(stage: str, name: str) -> Path | None:
    """The recipe `name`'s file for `stage`, or None when that recipe has none."""
    path = RECIPE_ROOT / name / f"{stage}.yaml"
    return path if path.is_file() else None


def recipe(stage: str, name: str = "small") -> dict:
    """The options of one stage's recipe file."""
    return yaml.safe_load((RECIPE_ROOT / name / f"{stage}.yaml").read_text()) or {}


def recipe_for(model: str | None, choice: str) -> str:
    """`--recipe auto`: a catalog model's own recipe, else the lab's small one."""
    return CATALOG_RECIPES.get(model or "", "small") if choice == "auto" else choice


def from_recipe(config_cls, stage: str, changes: dict, recipe_name: str = "small", **required):
    """A stage's config: its recipe file over the CLI defaults, then `changes` (budget, seed, paths)."""
    config = apply_overrides(config_cls(**required), recipe(stage, recipe_name),
                             str(RECIPE_ROOT / recipe_name / f"{stage}.yaml"))
    return dataclasses.replace(config, **changes)
