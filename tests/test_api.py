"""The Python API (`dvpo.GVMTrainer`, `dvpo.DVPOTrainer`, ...): configs mirror the CLI's options, trainers take
what TRL's take (datasets in memory, loaded models, callables, callbacks) and give the CLI's weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import TrainerCallback

import dvpo
from dvpo.cli import main
from dvpo.errors import ConfigError
from dvpo.recipes import recipe
from dvpo.stage_options import GvmConfig, RlConfig

GVM_SETTINGS = dict(max_steps=3, batch_size=8, learning_rate=1e-3, max_length=96, seed=3)
RL_SETTINGS = dict(steps=3, rollout_batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=8, save_every=100,
                   seed=3)


def cli_args(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(folder) -> dict:
    """Every saved tensor of a finished run (full weights or LoRA adapters), checkpoints aside."""
    files = [f for f in sorted(folder.rglob("*.safetensors")) if "checkpoints" not in f.parts]
    assert files, f"no weights in {folder}"
    return {f"{f.relative_to(folder)}:{key}": value for f in files for key, value in load_file(str(f)).items()}


def test_every_config_has_its_stage_options_and_defaults_except_what_trainers_take():
    stage = {f.name: f for f in dataclasses.fields(RlConfig)}
    api = {f.name: f for f in dataclasses.fields(dvpo.DVPOConfig)}
    assert set(stage) - set(api) == {"algo", "policy", "prompts", "out", "gvm", "reward_model", "reward_fn",
                                     "eval_prompts", "score_fn", "eval_scorer"}
    assert set(api) - set(stage) == {"output_dir"}
    for name in api.keys() - {"output_dir"}:
        assert api[name].metadata == stage[name].metadata
        assert dataclasses.asdict(dvpo.DVPOConfig())[name] == dataclasses.asdict(
            RlConfig(algo="dvpo", policy="p", prompts="q", out="o"))[name]
    gvm_fields = {f.name for f in dataclasses.fields(GvmConfig)}
    assert gvm_fields - {f.name for f in dataclasses.fields(dvpo.GVMConfig)} == {"model", "data", "out"}
    assert dvpo.GVMConfig().lora_r == GvmConfig(model="m", data="d", out="o").lora_r == 8
    doc = dvpo.DVPOConfig.__doc__
    assert "learning_rate (`float`, *optional*, defaults to `2e-06`)" in doc and "paper: 2e-6" in doc


def test_configs_load_recipes_and_yaml_and_name_what_belongs_to_the_trainer(tmp_path):
    config = dvpo.DVPOConfig.from_recipe("small", output_dir=str(tmp_path / "run"), seed=5)
    assert (config.learning_rate, config.steps, config.seed) == (recipe("rl")["learning_rate"], recipe("rl")["steps"], 5)
    assert dvpo.GVMConfig.from_recipe("smollm2").lora_r == recipe("gvm", "smollm2")["lora_r"]
    stage = config.stage_config(policy="p", prompts="q", gvm="g")
    assert (stage.algo, stage.out, stage.learning_rate) == ("dvpo", str(tmp_path / "run"), config.learning_rate)
    saved = tmp_path / "saved.yaml"
    saved.write_text("model: m\nlearning_rate: 1.0e-3\n")
    with pytest.raises(ConfigError, match="given to the trainer \\(model=...\\)"):
        dvpo.GVMConfig.from_yaml(saved)
    saved.write_text("learning_rat: 1.0e-3\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rat'"):
        dvpo.GVMConfig.from_yaml(saved)
    with pytest.raises(ConfigError, match="no recipe 'big' for gvm"):
        dvpo.GVMConfig.from_recipe("big")
    assert dvpo.DVPOConfig.from_recipe("authors").dvpo_advantage == "authors"  # the authors' two stages
    with pytest.raises(ConfigError, match=r"no recipe 'authors' for sft \(choose from small, smollm2\)"):
        dvpo.SFTConfig.from_recipe("authors")


def test_a_gvm_then_dvpo_from_python_on_a_dataset_in_memory_gives_the_cli_weights(tiny_model, lab_data, tmp_path):
    rated = Dataset.from_list(rows(lab_data["rated"]))
    prompts = [{"prompt": row["prompt"]} for row in rows(lab_data["prompts"])]
    gvm = dvpo.GVMTrainer(model=str(tiny_model), args=dvpo.GVMConfig(output_dir=str(tmp_path / "py-gvm"),
                                                                      **GVM_SETTINGS), train_dataset=rated)
    gvm_metrics = gvm.train()
    assert gvm_metrics["stage"] == "gvm" and gvm_metrics["steps"] == 3 and "train_loss" in gvm_metrics
    policy = dvpo.DVPOTrainer(model=str(tiny_model), value_model=gvm,
                              args=dvpo.DVPOConfig(output_dir=str(tmp_path / "py-dvpo"), **RL_SETTINGS),
                              train_dataset=prompts)
    metrics = policy.train()
    assert metrics["stage"] == "rl" and metrics["algo"] == "dvpo" and "kl" in metrics and "gvm_value_mean" in metrics
    assert policy.save_model() == tmp_path / "py-dvpo"
    for name, stage in (("py-gvm", "gvm"), ("py-dvpo", "rl")):  # each folder's model card, as the Hub reads it
        card = ModelCard.load(tmp_path / name / "README.md")
        assert card.data.base_model == str(tiny_model) and {"dvpo", stage} <= set(card.data.tags)
        assert "trained from scratch on dvpo's synthetic lab" in card.text and "arXiv:2502.16944" in card.text
    assert f'"final_kl": {metrics["kl"]}' in (tmp_path / "py-dvpo" / "README.md").read_text()

    main(["gvm", "--model", str(tiny_model), "--data", str(lab_data["rated"]), "--out", str(tmp_path / "cli-gvm"),
          *cli_args(GVM_SETTINGS)])
    main(["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--prompts", str(lab_data["prompts"]),
          "--gvm", str(tmp_path / "cli-gvm"), "--out", str(tmp_path / "cli-dvpo"), *cli_args(RL_SETTINGS)])
    for name in ("gvm", "dvpo"):
        ours, theirs = weights(tmp_path / f"py-{name}"), weights(tmp_path / f"cli-{name}")
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.steps, self.events = [], []

    def on_step_end(self, args, state, control, metrics=None, **kwargs):
        self.steps.append((state.global_step, metrics["proxy_score"]))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append("end")


def test_grpo_from_python_with_a_reward_function_and_a_callback(tiny_model, lab_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []

    def brevity(prompts, completions, **kwargs):
        calls.append(len(completions))
        return [-float(len(c.split())) for c in completions]

    recorder = StepRecorder()
    trainer = dvpo.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), reward_funcs=brevity,
                               processing_class=AutoTokenizer.from_pretrained(tiny_model),
                               args=dvpo.GRPOConfig(output_dir=str(tmp_path / "grpo"), group_size=2, **RL_SETTINGS),
                               train_dataset=Dataset.from_list(rows(lab_data["prompts"])[:8]), callbacks=[recorder])
    metrics = trainer.train()
    assert calls == [4, 4, 4] and [step for step, _ in recorder.steps] == [1, 2, 3] and recorder.events == ["end"]
    assert metrics["proxy_score"] == recorder.steps[-1][1]
    assert (tmp_path / "grpo-inputs" / "model" / "config.json").is_file()  # the loaded model, handed to the stage
    assert (tmp_path / "grpo" / "model.safetensors").is_file()


class StopAfter(TrainerCallback):
    """Asks for a checkpoint after step 1 and for the end of training after step 2, as a Trainer callback would."""

    def on_step_end(self, args, state, control, **kwargs):
        control.should_save = state.global_step == 1
        control.should_training_stop = state.global_step == 2


def test_a_callback_can_ask_for_a_checkpoint_and_stop_the_run(tiny_model, lab_data, tmp_path):
    trainer = dvpo.GRPOTrainer(model=str(tiny_model), reward_funcs=lambda prompts, completions, **kw: [0.0] * len(
        completions), args=dvpo.GRPOConfig(output_dir=str(tmp_path / "grpo"), group_size=2, **{**RL_SETTINGS,
                                                                                             "steps": 4}),
                               train_dataset=Dataset.from_list(rows(lab_data["prompts"])[:8]), callbacks=[StopAfter()])
    metrics = trainer.train()
    assert metrics["step"] == 2 and [r["step"] for r in rows(tmp_path / "grpo" / "metrics.jsonl")] == [1, 2]
    assert json.loads((tmp_path / "grpo" / "dvpo_complete.json").read_text())["steps"] == 2
    assert (tmp_path / "grpo" / "checkpoints" / "step-1").is_dir()  # asked for, though --save-every is 100
    assert (tmp_path / "grpo" / "model.safetensors").is_file()


class FailAtStep(TrainerCallback):
    """Stands in for a crash after step `step` (the checkpoint of step `step - 1` is on disk)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("crash")


class HistoryAtEnd(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        self.steps = [record["step"] for record in state.log_history]


def test_a_resumed_run_gives_its_callbacks_the_whole_history(tiny_model, lab_data, tmp_path):
    """As a Trainer restores trainer_state.json, the RL loop restores the callbacks' TrainerState."""
    def trainer(callback):
        return dvpo.GRPOTrainer(model=str(tiny_model), reward_funcs=lambda prompts, completions, **kw: [0.0] * len(
            completions), args=dvpo.GRPOConfig(output_dir=str(tmp_path / "grpo"), group_size=2,
                                               **{**RL_SETTINGS, "steps": 4, "save_every": 2}),
            train_dataset=Dataset.from_list(rows(lab_data["prompts"])[:8]), callbacks=[callback])

    with pytest.raises(RuntimeError, match="crash"):
        trainer(FailAtStep(3)).train()
    assert (tmp_path / "grpo" / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    history = HistoryAtEnd()
    trainer(history).train()
    assert history.steps == [1, 2, 3, 4]


def test_trainers_refuse_what_they_cannot_use(tiny_model, lab_data, tmp_path):
    from datasets import DatasetDict
    from transformers import AutoModelForCausalLM

    prompts = rows(lab_data["prompts"])
    with pytest.raises(ConfigError, match="needs its tokenizer: pass processing_class"):
        dvpo.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), reward_funcs=len,
                         args=dvpo.GRPOConfig(output_dir=str(tmp_path / "a")), train_dataset=prompts)
    with pytest.raises(ConfigError, match="pass one of its splits \\(train\\)"):
        dvpo.GVMTrainer(model=str(tiny_model), args=dvpo.GVMConfig(output_dir=str(tmp_path / "b")),
                        train_dataset=DatasetDict({"train": Dataset.from_list(prompts)}))
    with pytest.raises(ConfigError, match="takes args=DVPOConfig"):
        dvpo.DVPOTrainer(model=str(tiny_model), value_model="g", args=dvpo.PPOConfig(), train_dataset=prompts)
    with pytest.raises(ConfigError, match="ref_model must be None"):
        dvpo.DVPOTrainer(model=str(tiny_model), value_model="g", ref_model=str(tiny_model), train_dataset=prompts)


@pytest.mark.slow
def test_the_api_example_runs_as_written(tmp_path):
    """examples/api_gvm_dvpo.py --quick: both paths of docs/api.md (rated data; a reward function only)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "api_gvm_dvpo.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("GVM held-out pairwise accuracy", "DVPO (rated data): judge", "DVPO (reward function): judge",
                 "GRPO (reward function): judge"):
        assert line in done.stdout
    assert all((tmp_path / run / "dvpo_complete.json").is_file() for run in ("sft", "gvm", "dvpo", "gvm_fn", "grpo"))


def test_configs_import_no_torch():
    """A config, its help and its recipes are plain dataclasses: a notebook builds one in a fraction of a second."""
    import subprocess
    import sys

    code = ("import sys, dvpo; cfg = dvpo.DVPOConfig.from_recipe('small', output_dir='o'); "
            "assert cfg.dvpo_advantage and 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "dvpo.GRPOTrainer; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
