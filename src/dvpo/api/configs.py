"""The Python API's configs (`DVPOConfig`, `GVMConfig`, ...), made from the CLI's stage options.

Each config holds the same fields, defaults and help as its `dvpo <stage>` command, so the option schema
stays the single source of both. What a trainer takes as an argument (the model, the data, the value or
reward model, the reward functions) is not a config field, and `out` is `output_dir`, as in TRL. A config
turns into its stage's options with `stage_config(...)`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from dvpo.errors import ConfigError
from dvpo.options import _coerce, read_options_file
from dvpo.recipes import RECIPE_ROOT, recipe_file
from dvpo.stage_options import DpoConfig, GvmConfig, RlConfig, RmConfig, SftConfig

OUTPUT_DIR_HELP = "the run's folder (the CLI's --out); re-training into it resumes from its last checkpoint"


class StageArgs:
    """What every API config shares: YAML and recipe loading, and the stage options it stands for."""

    STAGE: ClassVar[type]
    RECIPE_STAGE: ClassVar[str]
    GIVEN: ClassVar[dict[str, str]]  # stage option -> the trainer argument that sets it
    FIXED: ClassVar[dict]

    @classmethod
    def from_yaml(cls, path: str | Path, **changes):
        """A config from a YAML file of options (a recipe, or a saved `dvpo_config.yaml`), then `changes`.
        A key that a trainer argument sets instead (`model`, `data`, ...) is an error naming that argument."""
        loaded = read_options_file(path)
        values = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in {**loaded, **changes}.items():
            name = "output_dir" if str(key) == "out" else str(key).replace("-", "_")
            if name in cls.GIVEN:
                raise ConfigError(f"{path}: option '{key}' is given to the trainer ({cls.GIVEN[name]}=...), "
                                  f"not to {cls.__name__}")
            if name in cls.FIXED and value == cls.FIXED[name]:
                continue
            if name not in names:
                raise ConfigError(f"{path}: unknown option '{key}' for {cls.__name__} "
                                  f"(valid: {', '.join(sorted(names))})")
            values[name] = _coerce(cls, name, value, str(path))
        return cls(**values)

    @classmethod
    def from_recipe(cls, name: str = "small", **changes):
        """A recipe's settings of this stage (configs/recipes/): `small` (what `dvpo demo` trains the lab's ~2M
        models with), `smollm2` (the pretrained SmolLM2-135M-Instruct with LoRA), or `authors` (the DVPO authors'
        code; GVM and RL only)."""
        path = recipe_file(cls.RECIPE_STAGE, name)
        if path is None:
            have = sorted(p.parent.name for p in RECIPE_ROOT.glob(f"*/{cls.RECIPE_STAGE}.yaml"))
            raise ConfigError(f"no recipe {name!r} for {cls.RECIPE_STAGE} (choose from {', '.join(have)})")
        return cls.from_yaml(path, **changes)

    def stage_config(self, **given):
        """The `dvpo <stage>` options of this config, with what the trainer's arguments set."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "output_dir"}
        return self.STAGE(**values, **self.FIXED, **given, out=str(self.output_dir))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _docstring(name: str, summary: str, fields) -> str:
    """A transformers-style docstring listing every field, its type, default and help."""
    lines = [summary, "", "Args:"]
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"    {f.name} (`{f.type}`, *optional*, defaults to `{default!r}`):")
        lines.append(f"        {f.metadata.get('help', '')}")
    return "\n".join(lines) + "\n"


def api_config(name: str, stage: type, recipe_stage: str, given: dict[str, str], summary: str,
               fixed: dict | None = None) -> type:
    """A dataclass with `output_dir` and every option of `stage` that no trainer argument sets."""
    fixed = fixed or {}
    fields = [("output_dir", "str", dataclasses.field(default="trainer_output", metadata={"help": OUTPUT_DIR_HELP}))]
    for f in dataclasses.fields(stage):
        if f.name in given or f.name in fixed or f.name == "out":
            continue
        kwargs = {"metadata": f.metadata}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = f.default_factory
        else:
            raise TypeError(f"{stage.__name__}.{f.name} is required but no trainer argument sets it")
        fields.append((f.name, f.type, dataclasses.field(**kwargs)))
    cls = dataclasses.make_dataclass(name, fields, bases=(StageArgs,), kw_only=True, namespace={
        "STAGE": stage, "RECIPE_STAGE": recipe_stage, "GIVEN": given, "FIXED": fixed,
        "__module__": __name__})
    cls.__doc__ = _docstring(name, summary, dataclasses.fields(cls))
    return cls


OFFLINE = {"model": "model", "data": "train_dataset"}
SFTConfig = api_config("SFTConfig", SftConfig, "sft", OFFLINE, "Settings of `dvpo.SFTTrainer` (`dvpo sft`).")
GVMConfig = api_config("GVMConfig", GvmConfig, "gvm", OFFLINE,
                       "Settings of `dvpo.GVMTrainer`: the global value model, trained offline by TD on rated data "
                       "(`dvpo gvm`).")
RewardConfig = api_config("RewardConfig", RmConfig, "rm", {**OFFLINE, "eval_data": "eval_dataset"},
                          "Settings of `dvpo.RewardTrainer`: a Bradley-Terry reward model (`dvpo rm`).")
DPOConfig = api_config("DPOConfig", DpoConfig, "dpo", OFFLINE, "Settings of `dvpo.DPOTrainer` (`dvpo dpo`).")

RL_GIVEN = {"policy": "model", "prompts": "train_dataset", "gvm": "value_model", "reward_model": "reward_model",
            "reward_fn": "reward_funcs", "eval_prompts": "eval_dataset", "score_fn": "score_fn",
            "eval_scorer": "eval_scorer"}


def rl_config(name: str, algo: str, summary: str) -> type:
    return api_config(name, RlConfig, "rl", RL_GIVEN, summary + " The options of `dvpo rl`; those of other "
                      "algorithms are refused when set.", fixed={"algo": algo})


DVPOConfig = rl_config("DVPOConfig", "dvpo", "Settings of `dvpo.DVPOTrainer`: PPO-style updates guided by a frozen "
                       "global value model's token values, no reward model and no critic (`dvpo rl --algo dvpo`).")
PPOConfig = rl_config("PPOConfig", "ppo", "Settings of `dvpo.PPOTrainer`: a reward and a critic trained beside the "
                      "policy (`dvpo rl --algo ppo`).")
ReMaxConfig = rl_config("ReMaxConfig", "remax", "Settings of `dvpo.ReMaxTrainer`: the greedy response's reward as "
                        "baseline (`dvpo rl --algo remax`).")
GRPOConfig = rl_config("GRPOConfig", "grpo", "Settings of `dvpo.GRPOTrainer`: group-normalised rewards "
                       "(`dvpo rl --algo grpo`).")
RLOOConfig = rl_config("RLOOConfig", "rloo", "Settings of `dvpo.RLOOTrainer`: a leave-one-out baseline "
                       "(`dvpo rl --algo rloo`).")
