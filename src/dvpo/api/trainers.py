"""Trainers in TRL's shape: `GVMTrainer`, `DVPOTrainer`, `PPOTrainer`, `GRPOTrainer`, ... over the stages the CLI runs.

A trainer takes models, data and functions as TRL's do, turns its config into the stage's options and runs
that stage: the same code as `dvpo <stage>`, so the same settings and seed give the same weights. `train()`
returns the final metrics, `save_model()` the folder the CLI writes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
from pathlib import Path

from transformers import TrainerCallback

from dvpo.api import configs
from dvpo.api.inputs import Inputs, function_specs, run_folder
from dvpo.errors import ConfigError
from dvpo.trainers.run_dir import COMPLETE_MARKER


class LastMetrics(TrainerCallback):
    """Keeps the last metrics a stage reports (`on_log` of the Hugging Face Trainer and of the RL loop)."""

    def __init__(self):
        self.logs: dict = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.update(logs or {})


class StageTrainer:
    """One stage run from Python. Subclasses name the stage's function and build its options
    (`stage_config()`: `OfflineTrainer` and `RLTrainer`)."""

    STAGE_FUNCTION: str  # "module:function" of the stage, as the CLI registers it
    CONFIG: type

    def __init__(self, args, callbacks):
        if args is None:
            args = self.CONFIG()
        if not isinstance(args, self.CONFIG):
            raise ConfigError(f"{type(self).__name__} takes args={self.CONFIG.__name__}(...), got "
                              f"{type(args).__name__}")
        self.args, self.callbacks = args, list(callbacks or [])
        self.inputs = Inputs(args.output_dir)
        self.metrics: dict = {}

    @classmethod
    def from_stage_config(cls, stage_cfg):
        """The trainer a `dvpo <stage>` command runs: the command's options split into this trainer's config and
        its arguments (`model`, `train_dataset`, ...)."""
        names = {f.name for f in dataclasses.fields(cls.CONFIG)} - {"output_dir"}
        args = cls.CONFIG(output_dir=stage_cfg.out, **{name: getattr(stage_cfg, name) for name in names})
        return cls._construct(args, {argument: getattr(stage_cfg, option)
                                     for option, argument in cls.CONFIG.GIVEN.items()})

    @classmethod
    def _construct(cls, args, given: dict):
        return cls(args=args, **given)

    def train(self) -> dict:
        """Run the stage (resuming from the last checkpoint in `args.output_dir`); the final metrics."""
        module, _, name = self.STAGE_FUNCTION.partition(":")
        last = LastMetrics()
        folder = getattr(importlib.import_module(module), name)(self.stage_config(), callbacks=[*self.callbacks, last])
        marker = Path(folder) / COMPLETE_MARKER  # the main process writes it; the others may get here first
        summary = json.loads(marker.read_text()) if marker.is_file() else {}
        self.metrics = {**last.logs, **summary}
        return self.metrics

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        """The trained run's folder, as the CLI writes it; copied to `output_dir` when another is given."""
        folder = Path(self.args.output_dir)
        if not (folder / COMPLETE_MARKER).is_file():
            raise ConfigError(f"{folder} holds no finished run yet: call train() first")
        if output_dir is None or Path(output_dir).resolve() == folder.resolve():
            return folder
        shutil.copytree(folder, output_dir, dirs_exist_ok=True)
        return Path(output_dir)


class OfflineTrainer(StageTrainer):
    """SFT, GVM, reward model and DPO: a model and a dataset (and for some an evaluation set)."""

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 callbacks=None):
        super().__init__(args, callbacks)
        if train_dataset is None:
            raise ConfigError(f"{type(self).__name__} needs train_dataset")
        self.model = self.inputs.model(model, processing_class, "model")
        self.train_dataset = self.inputs.rows(train_dataset, "train")
        self.eval_dataset = self.inputs.rows(eval_dataset, "eval")

    def stage_config(self):
        return self.args.stage_config(model=self.model, data=self.train_dataset)


class SFTTrainer(OfflineTrainer):
    """Supervised fine-tuning on prompt/completion rows, loss on completions. Over TRL's `SFTTrainer` it adds
    resume from the folder, truncation counted in the log and a LoRA model merged into a plain folder."""

    STAGE_FUNCTION, CONFIG = "dvpo.trainers.sft:run_sft", configs.SFTConfig

    def __init__(self, model, args=None, train_dataset=None, processing_class=None, callbacks=None):
        super().__init__(model, args, train_dataset, None, processing_class, callbacks)


class GVMTrainer(OfflineTrainer):
    """The global value model, trained offline by TD on rated rows (prompt, completion, score, optional policy),
    which TRL has no counterpart of. An `eval_dataset` of rated rows adds its held-out pairwise accuracy
    (`eval_pairwise_accuracy`, the mean token value ranking each prompt's responses) to the final metrics."""

    STAGE_FUNCTION, CONFIG = "dvpo.trainers.gvm:run_gvm", configs.GVMConfig

    def train(self) -> dict:
        metrics = super().train()
        from dvpo.distributed import process_state

        if self.eval_dataset and process_state().is_main_process:  # the others may not see the saved folder yet
            from dvpo.eval.gvm_accuracy import evaluate_gvm

            result = evaluate_gvm(str(self.args.output_dir), self.eval_dataset, seed=self.args.seed)
            metrics["eval_pairwise_accuracy"] = result["accuracy"]["mean"]
        return metrics


class RewardTrainer(OfflineTrainer):
    """A Bradley-Terry reward model on preference rows (prompt, chosen, rejected) or rated rows, with its score
    statistics stored for the RL stage's normalisation and the checkpoint picked on a validation split."""

    STAGE_FUNCTION, CONFIG = "dvpo.trainers.rm:run_rm", configs.RewardConfig

    def stage_config(self):
        return self.args.stage_config(model=self.model, data=self.train_dataset, eval_data=self.eval_dataset)


class DPOTrainer(OfflineTrainer):
    """TRL's `DPOTrainer` on preference or rated rows; adds resume from the folder, rated rows turned into
    best-versus-worst pairs, and a LoRA model merged into a plain folder."""

    STAGE_FUNCTION, CONFIG = "dvpo.trainers.dpo:run_dpo", configs.DPOConfig

    def __init__(self, model, ref_model=None, args=None, train_dataset=None, processing_class=None,
                 callbacks=None):
        if ref_model is not None:
            raise ConfigError("DPOTrainer: the reference is the starting model itself (or its adapters off); "
                              "ref_model must be None")
        super().__init__(model, args, train_dataset, None, processing_class, callbacks)


class RLTrainer(StageTrainer):
    """The online RL loop shared by every algorithm; subclasses name the algorithm (`CONFIG` fixes it)."""

    STAGE_FUNCTION = "dvpo.trainers.rl:run_rl"

    def __init__(self, model, args=None, train_dataset=None, *, value_model=None, reward_model=None,
                 reward_funcs=None, ref_model=None, eval_dataset=None, score_fn=None, processing_class=None,
                 callbacks=None, eval_scorer=None):
        super().__init__(args, callbacks)
        if ref_model is not None:
            raise ConfigError(f"{type(self).__name__}: the reference is a frozen copy of the starting model (or "
                              "its adapters off under LoRA); ref_model must be None")
        if train_dataset is None:
            raise ConfigError(f"{type(self).__name__} needs train_dataset (rows with a prompt)")
        self.given = dict(
            policy=self.inputs.model(model, processing_class, "model"),
            prompts=self.inputs.rows(train_dataset, "train"),
            gvm=run_folder(value_model, "value_model"),
            reward_model=run_folder(reward_model, "reward_model"),
            reward_fn=function_specs(reward_funcs),
            eval_prompts=self.inputs.rows(eval_dataset, "eval"),
            score_fn=(function_specs(score_fn) or [None])[0],
            eval_scorer=run_folder(eval_scorer, "eval_scorer"),
        )

    @classmethod
    def _construct(cls, args, given: dict):
        """Every RL option through the shared constructor, so one the algorithm does not use (`--reward-fn`
        with `--algo dvpo`) reaches the algorithm's own check and its error."""
        trainer = cls.__new__(cls)
        RLTrainer.__init__(trainer, args=args, **given)
        return trainer

    def stage_config(self):
        return self.args.stage_config(**self.given)


class DVPOTrainer(RLTrainer):
    """DVPO: PPO-style updates guided by a frozen global value model's token values (from `GVMTrainer` or
    `dvpo gvm`), with no reward model and no critic in the loop."""

    CONFIG = configs.DVPOConfig

    def __init__(self, model, value_model, args=None, train_dataset=None, ref_model=None, processing_class=None,
                 callbacks=None, eval_dataset=None, score_fn=None, eval_scorer=None):
        super().__init__(model, args, train_dataset, value_model=value_model, ref_model=ref_model,
                         eval_dataset=eval_dataset, score_fn=score_fn, processing_class=processing_class,
                         callbacks=callbacks, eval_scorer=eval_scorer)


class PPOTrainer(RLTrainer):
    """PPO: a reward model and/or reward functions, and a critic trained beside the policy (started from the
    reward model)."""

    CONFIG = configs.PPOConfig

    def __init__(self, model, reward_model=None, reward_funcs=None, args=None, train_dataset=None, ref_model=None,
                 processing_class=None, callbacks=None, eval_dataset=None, score_fn=None, eval_scorer=None):
        super().__init__(model, args, train_dataset, reward_model=reward_model, reward_funcs=reward_funcs,
                         ref_model=ref_model, eval_dataset=eval_dataset, score_fn=score_fn,
                         processing_class=processing_class, callbacks=callbacks, eval_scorer=eval_scorer)


class _RewardFunctionTrainer(RLTrainer):
    """ReMax, GRPO and RLOO: TRL's argument order, reward functions first."""

    def __init__(self, model, reward_funcs=None, reward_model=None, args=None, train_dataset=None,
                 processing_class=None, callbacks=None, eval_dataset=None, score_fn=None, eval_scorer=None):
        super().__init__(model, args, train_dataset, reward_model=reward_model, reward_funcs=reward_funcs,
                         eval_dataset=eval_dataset, score_fn=score_fn, processing_class=processing_class,
                         callbacks=callbacks, eval_scorer=eval_scorer)


class GRPOTrainer(_RewardFunctionTrainer):
    """GRPO: each prompt's group of samples, rewards standardised within the group."""

    CONFIG = configs.GRPOConfig


class ReMaxTrainer(_RewardFunctionTrainer):
    """ReMax: the greedy response's reward as each sample's baseline."""

    CONFIG = configs.ReMaxConfig


class RLOOTrainer(_RewardFunctionTrainer):
    """RLOO: each sample's baseline is the mean reward of its group's other samples."""

    CONFIG = configs.RLOOConfig


RL_TRAINERS = {trainer.CONFIG.FIXED["algo"]: trainer for trainer in (DVPOTrainer, PPOTrainer, ReMaxTrainer,
                                                                      GRPOTrainer, RLOOTrainer)}
