"""The small-model recipes: YAML files that `dvpo <stage> --config` reads and the lab pipeline uses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from dvpo.cli import main
from dvpo.stage_options import DpoConfig, GenerateConfig, GvmConfig, RlConfig, RmConfig, SftConfig
from dvpo.pipeline import (DEMO, DEMO_QUICK, FULL, QUICK, RECIPE_NAMES, RECIPES, dpo_config, gvm_config, lab_budget,
                           recipe, recipe_for, rl_config, rm_config, sft_config)

REPO_RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "small"
STAGES = {"sft": SftConfig, "gvm": GvmConfig, "rm": RmConfig, "rl": RlConfig, "dpo": DpoConfig,
          "generate": GenerateConfig}


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_the_repository_path_is_the_packaged_recipes(name):
    folder = REPO_RECIPES.parent / name
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(f"{s}.yaml" for s in STAGES)
    for stage in STAGES:
        assert (folder / f"{stage}.yaml").read_text() == (RECIPES.parent / name / f"{stage}.yaml").read_text()


@pytest.mark.parametrize("name", RECIPE_NAMES)
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_recipe_option_is_a_real_option_of_its_stage(stage, name):
    names = {f.name for f in dataclasses.fields(STAGES[stage])}
    assert set(recipe(stage, name)) <= names


def test_a_catalog_model_brings_its_own_recipe_and_budget(tmp_path):
    assert recipe_for("smollm2-135m-instruct", "auto") == "smollm2" and recipe_for(None, "auto") == "small"
    assert recipe_for("smollm2-135m-instruct", "small") == "small"
    budget = lab_budget("smollm2", False, FULL, QUICK)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "test_prompts.jsonl").write_text('{"prompt": "sort 3 1 2"}\n')
    paths = (tmp_path / "m", tmp_path / "d", tmp_path / "o", budget, 0)
    rl = rl_config("ppo", *paths, reward_model="r")
    assert (rl.lora_r, rl.critic_lora_r, rl.steps) == (16, None, recipe("rl", "smollm2")["steps"])
    assert gvm_config(*paths).lora_r == 8 and sft_config(*paths).lora_r == 16
    assert lab_budget("small", True, FULL, QUICK) is QUICK


def test_the_pipeline_trains_every_stage_with_its_recipe(tmp_path):
    paths = (tmp_path / "m", tmp_path / "d", tmp_path / "o", FULL, 3)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "test_prompts.jsonl").write_text('{"prompt": "sort 3 1 2"}\n')
    built = {"sft": sft_config(*paths), "gvm": gvm_config(*paths), "rm": rm_config(*paths),
             "rl": rl_config("dvpo", *paths, gvm="g"), "dpo": dpo_config(*paths)}
    for stage, config in built.items():
        for key, value in recipe(stage).items():
            if stage == "rl" and key == "eval_every":
                continue  # evaluated six times a run, whatever the steps
            assert getattr(config, key) == pytest.approx(value), (stage, key)
        assert config.seed == 3
    assert built["rl"].score_fn == "dvpo.lab.tasks:judge_completions"  # lab data: the lab's judge monitors
    assert rl_config("ppo", *paths[:3], QUICK, 0, reward_model="r").steps == 40  # the quick budget's change
    (tmp_path / "d" / "test_prompts.jsonl").write_text('{"prompt": "Write a haiku."}\n')
    other = rl_config("dvpo", *paths, gvm="g")
    assert other.score_fn is None and other.eval_prompts is None  # other data: no score to monitor
    quick = (*paths[:3], DEMO_QUICK, 0)  # demo --quick: 3/4 of QUICK's GVM, RM and RL steps, GVM and RM still equal
    assert (gvm_config(*quick).epochs / QUICK.changes("gvm")["epochs"], rm_config(*quick).epochs * 3,
            rl_config("dvpo", *quick, gvm="g").steps) == (0.75, 1.5, 32)
    demo = (*paths[:3], DEMO, 0)  # the demo: the GVM and RM on 2/3 of their steps, still as many as each other
    assert (gvm_config(*demo).epochs, rm_config(*demo).epochs, rl_config("dvpo", *demo, gvm="g").steps) == (2, 0.67, 150)


def test_a_stage_runs_from_its_recipe_with_command_line_options_winning(tiny_model, lab_data, tmp_path):
    out = tmp_path / "gvm"
    main(["gvm", "--config", str(REPO_RECIPES / "gvm.yaml"), "--model", str(tiny_model),
          "--data", str(lab_data["rated"]), "--out", str(out), "--max-steps", "2", "--batch-size", "8"])
    saved = yaml.safe_load((out / "dvpo_config.yaml").read_text())
    assert saved["batch_size"] == 8 and saved["max_steps"] == 2  # the command line wins
    assert saved["learning_rate"] == recipe("gvm")["learning_rate"] and saved["tau"] == recipe("gvm")["tau"]
    assert json.loads((out / "dvpo_complete.json").read_text())["stage"] == "gvm"
