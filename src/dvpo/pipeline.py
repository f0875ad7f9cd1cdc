"""The lab pipeline's stage settings, shared by `dvpo demo` and `dvpo compare`.

One place decides how each stage is configured on the lab (data sizes, learning rates, RL
settings), so the demo and the comparison train the same models the same way. The settings
suit a ~2M-parameter model trained from scratch; the CLI's own defaults are the paper's, for
real models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from dvpo.recipes import from_recipe, recipe
from dvpo.stage_options import DpoConfig, GenerateConfig, GvmConfig, RlConfig, RmConfig, SftConfig
from dvpo.data.formats import load_rows
from dvpo.eval.lab_judge import judge_file
from dvpo.lab.tasks import LAB_SCORE_FN, is_lab_prompt
from dvpo.lab.make_data import make_lab_data
from dvpo.models.init import init_model
from dvpo.rollout.generate import run_generate

logger = logging.getLogger(__name__)

EVAL_SAMPLES = recipe("generate")["num_samples"]  # samples per held-out prompt when judging a finished model


@dataclass(frozen=True)
class LabBudget:
    """Sizes of one run flavour (the paper's 30/50/20 split of training prompts) and its changes to the
    recipes' budgets (None: the recipe's)."""

    n_sft: int
    n_rated: int
    n_rl: int
    n_test: int
    stage_changes: dict = field(default_factory=dict)
    size: str = "small"
    recipe: str = "small"
    held_out: str = "test"  # what judges, RL monitoring and scorer accuracy read: "test" or "validation"

    def changes(self, stage: str) -> dict:
        return dict(self.stage_changes.get(stage, {}))

    @property
    def held_out_prompts(self) -> str:
        return HELD_OUT_FILES[self.held_out][0]

    @property
    def held_out_rated(self) -> str:
        return HELD_OUT_FILES[self.held_out][1]


HELD_OUT_FILES = {"test": ("test_prompts.jsonl", "rated_test.jsonl"),
                  "validation": ("validation_prompts.jsonl", "rated_validation.jsonl")}


FULL = LabBudget(n_sft=3000, n_rated=5000, n_rl=2000, n_test=200)
DEMO = dataclasses.replace(FULL, stage_changes={"gvm": {"epochs": 2}, "rm": {"epochs": 0.67}})
"""`dvpo demo`: the full data, the GVM and the reward model trained for 2/3 of their recipes' steps (still equal to
each other) so that install and demo fit 10 minutes on 2 cores; `dvpo compare` trains the full recipes. Measured
in the README: 2/3 of the steps costs about 1 point of validation accuracy, 40% fewer rated prompts cost 4-5."""
QUICK = LabBudget(n_sft=1500, n_rated=1500, n_rl=600, n_test=100,
                  stage_changes={"sft": {"epochs": 8}, "gvm": {"epochs": 2}, "rm": {"epochs": 0.67},
                                 "rl": {"steps": 40}})  # the reward model: as many steps as the GVM
DEMO_QUICK = dataclasses.replace(QUICK, stage_changes={"sft": {"epochs": 7}, "gvm": {"epochs": 1.5},
                                                       "rm": {"epochs": 0.5}, "rl": {"steps": 32}})
"""`dvpo demo --quick`: QUICK's data with about 3/4 of its GVM, reward-model and RL steps and 7 SFT epochs, so that it
fits 3 minutes on 2 cores (QUICK itself took 197 s on a fresh clone); `dvpo compare --quick` keeps QUICK."""
SMOLLM2 = LabBudget(n_sft=1200, n_rated=600, n_rl=600, n_test=100, recipe="smollm2")
"""The pretrained SmolLM2 on the lab: fewer rows than FULL, since each step of a 135M model costs about 2.5 s on
2 CPU cores (its recipe's own step counts bound each stage)."""
QUICK_NEW_TOKENS = {"max_new_tokens": 64}  # SmolLM2's --quick: sampled in RL and judged alike
SMOLLM2_QUICK = dataclasses.replace(SMOLLM2, n_sft=400, n_rated=200, n_rl=200, n_test=32, stage_changes={
    "sft": {"max_steps": 40}, "gvm": {"max_steps": 30}, "rm": {"max_steps": 30},
    "rl": {"steps": 10, "eval_every": 5, **QUICK_NEW_TOKENS}, "generate": QUICK_NEW_TOKENS})
"""`--quick` on SmolLM2: a smoke run of every stage (its scores mean little), sized for under 15 minutes on 2 cores:
2 held-out evaluations per RL run (one of 32 prompts costs about two RL steps). SFT keeps 40 steps: after 30 the
model rambles to the new-token cap more often, and RL steps, which generate until the longest sample ends, took
2-3x as long. Sampling stops at 64 new tokens, not the recipe's 96, since a briefly trained model's rambling
samples run to the cap and set each batch's time; lab 1's answers take under 25 tokens, lab 2's 7.7% over 64."""


def lab_budget(recipe_name: str, quick: bool, small: LabBudget, small_quick: LabBudget) -> LabBudget:
    """The budget of a demo or comparison: the small recipe's own, or SmolLM2's."""
    if recipe_name == "smollm2":
        return SMOLLM2_QUICK if quick else SMOLLM2
    return small_quick if quick else small


class Timer:
    """Wall-clock seconds per stage, for the report."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 1)
        logger.info("stage %s took %.1f s", name, self.seconds[name])
        return result


def prepare_lab(root: Path, budget: LabBudget, seed: int, timer: Timer, task: str = "digits",
                base_model: str | None = None) -> tuple[Path, Path]:
    """Data of lab task `task` and, unless a `base_model` is given, a fresh tokenizer + Llama under `root` (kept
    when already there); returns (data, base model)."""
    data, init_dir = root / "data", root / "init"
    if "validation_prompts" not in (json.loads((data / "manifest.json").read_text())["files"]
                                    if (data / "manifest.json").exists() else {}):  # validation sets came later
        timer("make-data", make_lab_data, data, seed=seed, n_sft=budget.n_sft, n_rated=budget.n_rated,
              n_rl=budget.n_rl, n_test=budget.n_test, n_rated_test=budget.n_test, task=task)
    if base_model:
        return data, Path(base_model)
    if not (init_dir / "dvpo_init.json").exists():
        timer("init", init_model, [str(data / f) for f in ("sft.jsonl", "rated.jsonl", "prompts.jsonl")],
              budget.size, str(init_dir), seed=seed)
    return data, init_dir


def sft_config(model: Path, data: Path, out: Path, budget: LabBudget, seed: int) -> SftConfig:
    return from_recipe(SftConfig, "sft", {**budget.changes("sft"), "seed": seed}, budget.recipe, model=str(model),
                       data=str(data / "sft.jsonl"), out=str(out))


def gvm_config(sft: Path, data: Path, out: Path, budget: LabBudget, seed: int) -> GvmConfig:
    return from_recipe(GvmConfig, "gvm", {**budget.changes("gvm"), "seed": seed}, budget.recipe, model=str(sft),
                       data=str(data / "rated.jsonl"), out=str(out))


def rm_config(sft: Path, data: Path, out: Path, budget: LabBudget, seed: int) -> RmConfig:
    return from_recipe(RmConfig, "rm", {**budget.changes("rm"), "seed": seed,
                                        "eval_data": str(data / budget.held_out_rated)}, budget.recipe,
                       model=str(sft), data=str(data / "rated.jsonl"), out=str(out))


def rl_config(algo: str, sft: Path, data: Path, out: Path, budget: LabBudget, seed: int, **source) -> RlConfig:
    """The same RL settings for every algorithm (same prompts, same samples per step): only the source differs.
    On lab data the lab's judge is the loop's monitoring score (on rollouts, and on the held-out prompts six
    times a run, unless the budget sets `eval_every`); other data has no such score."""
    changes = budget.changes("rl")
    steps = changes.get("steps", recipe("rl", budget.recipe)["steps"])
    held_out = data / budget.held_out_prompts
    monitor = ({"score_fn": LAB_SCORE_FN, "eval_every": changes.get("eval_every", max(1, steps // 6)),
                "eval_prompts": str(held_out)}
               if all(is_lab_prompt(row["prompt"]) for row in load_rows(held_out, "prompts")) else {})
    return from_recipe(RlConfig, "rl", {**budget.changes("rl"), "seed": seed, **monitor, **source}, budget.recipe,
                       algo=algo, policy=str(sft), prompts=str(data / "prompts.jsonl"), out=str(out))


def dpo_config(sft: Path, data: Path, out: Path, budget: LabBudget, seed: int) -> DpoConfig:
    return from_recipe(DpoConfig, "dpo", {**budget.changes("dpo"), "seed": seed}, budget.recipe, model=str(sft),
                       data=str(data / "rated.jsonl"), out=str(out))


def judge_model(model: Path, prompts: Path, out: Path, baseline: Path | None, seed: int, timer: Timer,
                recipe_name: str = "small", changes: dict | None = None) -> dict:
    """Sample generate.yaml's responses per held-out prompt (4) at temperature 1 and score them with the lab judge.

    The run's own recipe's generate.yaml: every model of a run is judged alike, and its new-token cap is counted
    in that model family's tokens (lab 2's answers need 96 of SmolLM2's, 64 of the lab tokenizer's).
    Temperature 1 is the policy RL optimises (greedy decoding would hide what SFT has and has not learned).
    `changes` are the budget's own changes to that recipe (`--quick` on SmolLM2 caps new tokens as its RL does).
    """
    if not out.exists():
        timer(f"generate:{out.parent.name}/{out.stem}", run_generate, from_recipe(
            GenerateConfig, "generate", {**(changes or {}), "seed": seed}, recipe_name, model=str(model),
            prompts=str(prompts), out=str(out)))
    return judge_file(out, baseline if baseline is not None and baseline != out and baseline.exists() else None)

