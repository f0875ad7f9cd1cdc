"""The small-model recipes: YAML files that `dvpo <stage> --config` reads and the lab pipeline uses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from dvpo.cli import main
from dvpo.stage_options import DpoConfig, GenerateConfig, GvmConfig, RlConfig, RmConfig, SftConfig
from dvpo.pipeline import (DEMO, DEMO_QUICK, FULL, QUICK, SMOLLM2_QUICK, Timer, dpo_config, gvm_config, judge_model, lab_budget,
                           rl_config, rm_config, sft_config)
from dvpo.recipes import RECIPE_NAMES, RECIPES, recipe, recipe_for

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
    quick = rl_config("dvpo", *paths[:3], SMOLLM2_QUICK, 0, gvm="g")
    assert (quick.steps, quick.eval_every) == (10, 5)  # the budget's own cadence, not six times a run
    assert quick.max_new_tokens == SMOLLM2_QUICK.changes("generate")["max_new_tokens"] == 64  # judged as it trains


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


def test_the_lab_judge_samples_by_the_runs_own_recipe(tiny_model, lab_data, tmp_path):
    """An untrained model runs to the cap: 64 new tokens by the small recipe, 96 by smollm2's (lab 2's answers
    take up to 76 SmolLM2 tokens), so a pretrained model's long answers are judged whole."""
    completions = {}
    for name in ("small", "smollm2"):
        out = tmp_path / f"{name}.jsonl"
        judge_model(tiny_model, lab_data["test_prompts"], out, None, 0, Timer(), name)
        completions[name] = [json.loads(line)["completion"] for line in out.read_text().splitlines()]
    out = tmp_path / "capped.jsonl"  # a budget's change to the recipe (SmolLM2's --quick: 64 new tokens) holds
    judge_model(tiny_model, lab_data["test_prompts"], out, None, 0, Timer(), "smollm2", {"max_new_tokens": 64})
    completions["capped"] = [json.loads(line)["completion"] for line in out.read_text().splitlines()]
    mean_chars = {name: sum(map(len, texts)) / len(texts) for name, texts in completions.items()}
    assert mean_chars["smollm2"] > 1.25 * mean_chars["small"]  # 96 / 64 = 1.5 where every sample runs to the cap
    assert mean_chars["capped"] == pytest.approx(mean_chars["small"], rel=0.2)


def test_a_stage_runs_from_its_recipe_with_command_line_options_winning(tiny_model, lab_data, tmp_path):
    out = tmp_path / "gvm"
    main(["gvm", "--config", str(REPO_RECIPES / "gvm.yaml"), "--model", str(tiny_model),
          "--data", str(lab_data["rated"]), "--out", str(out), "--max-steps", "2", "--batch-size", "8"])
    saved = yaml.safe_load((out / "dvpo_config.yaml").read_text())
    assert saved["batch_size"] == 8 and saved["max_steps"] == 2  # the command line wins
    assert saved["learning_rate"] == recipe("gvm")["learning_rate"] and saved["tau"] == recipe("gvm")["tau"]
    assert json.loads((out / "dvpo_complete.json").read_text())["stage"] == "gvm"


AUTHORS = REPO_RECIPES.parent / "authors"


@pytest.mark.parametrize("stage", ["gvm", "rl"])
def test_the_authors_recipe_holds_real_options_of_its_two_stages(stage):
    """The authors' code trains only a value model and a policy: their recipe has those two stages."""
    assert sorted(p.stem for p in AUTHORS.glob("*.yaml")) == ["gvm", "rl"]
    options = yaml.safe_load((AUTHORS / f"{stage}.yaml").read_text())
    assert set(options) <= {f.name for f in dataclasses.fields(STAGES[stage])}


def test_the_authors_gvm_recipe_trains_on_preference_pairs_scored_plus_and_minus_one(tiny_model, lab_data, tmp_path):
    from dvpo.data.formats import load_scored_rows

    rated = [json.loads(line) for line in lab_data["rated"].read_text().splitlines()]
    by_prompt = {}
    for row in rated:
        by_prompt.setdefault(row["prompt"], []).append(row)
    pairs = [{"prompt": p, "chosen": max(rs, key=lambda r: r["score"])["completion"],
              "rejected": min(rs, key=lambda r: r["score"])["completion"]}
             for p, rs in by_prompt.items() if max(r["score"] for r in rs) > min(r["score"] for r in rs)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in pairs))
    converted = load_scored_rows(str(data))
    assert len(converted) == 2 * len(pairs)
    assert converted[0] == {"prompt": pairs[0]["prompt"], "completion": pairs[0]["chosen"], "score": 1.0}
    assert converted[1] == {"prompt": pairs[0]["prompt"], "completion": pairs[0]["rejected"], "score": -1.0}
    out = tmp_path / "gvm"
    main(["gvm", "--config", str(AUTHORS / "gvm.yaml"), "--model", str(tiny_model), "--data", str(data),
          "--out", str(out), "--max-steps", "2", "--batch-size", "8", "--max-length", "96", "--lora-r", "0",
          "--learning-rate", "1e-3"])
    meta = json.loads((out / "dvpo_gvm.json").read_text())
    assert (meta["tau"], meta["td_lambda"], meta["value_normalization"]) == (False, 0.95, "none")
    assert (meta["score_mean"], meta["score_std"]) == (0.0, 1.0)  # the ±1 labels are used as they are
    training = torch.load(next((out / "checkpoints").glob("checkpoint-*/training_args.bin")), weights_only=False)
    assert (training.optim.value, training.lr_scheduler_type.value) == ("adafactor", "linear")


def test_the_authors_rl_recipe_runs_with_adafactor_and_a_linear_decay(tiny_model, lab_data, tmp_path):
    from dvpo.trainers.rl import make_optimizer, schedule_factor
    from transformers.optimization import Adafactor

    assert [schedule_factor("linear", step, 4) for step in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert schedule_factor("constant", 3, 4) == 1.0
    assert isinstance(make_optimizer(torch.nn.Linear(2, 2).parameters(), "adafactor", 1e-3), Adafactor)
    gvm = tmp_path / "gvm"
    main(["gvm", "--config", str(AUTHORS / "gvm.yaml"), "--model", str(tiny_model), "--data", str(lab_data["rated"]),
          "--out", str(gvm), "--max-steps", "2", "--batch-size", "8", "--max-length", "96", "--lora-r", "0"])
    out = tmp_path / "rl"
    main(["rl", "--config", str(AUTHORS / "rl.yaml"), "--algo", "dvpo", "--policy", str(tiny_model), "--gvm", str(gvm),
          "--prompts", str(lab_data["prompts"]), "--out", str(out), "--steps", "2", "--rollout-batch-size", "4",
          "--mini-batch-size", "4", "--ppo-epochs", "1", "--max-new-tokens", "8", "--learning-rate", "1e-3"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["learning_rate"] for r in records] == pytest.approx([1e-3, 5e-4])
