"""The RL loop's events for transformers' `TrainerCallback`s, so a callback written for a Hugging Face
Trainer (or TRL's) watches an RL run too: `on_train_begin`, `on_step_end` and `on_log` with the step's
metrics (`metrics=` and `logs=`, the names of metrics.jsonl), `on_save` after each checkpoint and
`on_train_end`. `args` is the run's config, not a `TrainingArguments`. As in the Trainer, a callback may set
`control.should_save` (a checkpoint after this step) or `control.should_training_stop` (the run ends after
this step and saves its policy, like a finished run). A resumed run continues the checkpoint's
`TrainerState`, so `state.log_history` holds every step since the start."""

from __future__ import annotations

import torch
from transformers import TrainerControl, TrainerState


class RlEvents:
    """Calls each callback's event methods with a `TrainerState` that follows the loop's steps."""

    def __init__(self, callbacks, cfg, start_step: int, policy, tokenizer, accelerator=None,
                 restored: TrainerState | None = None):
        self.callbacks, self.cfg = list(callbacks or ()), cfg
        self.state = restored or TrainerState()
        self.state.global_step, self.state.max_steps = start_step, cfg.steps
        self.state.log_history = [r for r in self.state.log_history if r.get("step", 0) <= start_step]
        self.state.is_local_process_zero = accelerator.is_local_main_process if accelerator else True
        self.state.is_world_process_zero = accelerator.is_main_process if accelerator else True
        self.control = TrainerControl()
        self.objects = {"model": policy, "processing_class": tokenizer}

    def _call(self, event: str, **kwargs) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self.cfg, self.state, self.control, **self.objects, **kwargs)

    def train_begin(self) -> None:
        self._call("on_train_begin")

    def step_end(self, step: int, record: dict) -> None:
        self.state.global_step = step
        self.state.log_history.append(record)
        self._call("on_step_end", metrics=record)
        self._call("on_log", logs=record)

    def save(self) -> None:
        self._call("on_save")

    def requests(self, stats) -> tuple[bool, bool]:
        """(stop, save): whether a callback on any process asked to end the run or for a checkpoint after this
        step (agreed over all processes, or one would wait for the others forever); the save request is cleared."""
        asked = torch.tensor([float(self.control.should_training_stop), float(self.control.should_save)])
        self.control.should_save = False
        stop, save = (stats.sum(asked) > 0).tolist()
        return stop, save

    def train_end(self) -> None:
        self._call("on_train_end")
