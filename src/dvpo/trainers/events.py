"""The RL loop's events for transformers' `TrainerCallback`s, so a callback written for a Hugging Face
Trainer (or TRL's) watches an RL run too: `on_train_begin`, `on_step_end` and `on_log` with the step's
metrics (`metrics=` and `logs=`, the names of metrics.jsonl), `on_save` after each checkpoint and
`on_train_end`. `args` is the run's config, not a `TrainingArguments`. As in the Trainer, a callback may set
`control.should_save` (a checkpoint after this step) or `control.should_training_stop` (the run ends after
this step and saves its policy, like a finished run)."""

from __future__ import annotations

from transformers import TrainerControl, TrainerState


class RlEvents:
    """Calls each callback's event methods with a `TrainerState` that follows the loop's steps."""

    def __init__(self, callbacks, cfg, start_step: int, policy, tokenizer):
        self.callbacks, self.cfg = list(callbacks or ()), cfg
        self.state = TrainerState(global_step=start_step, max_steps=cfg.steps)
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

    def take_save_request(self) -> bool:
        """Whether a callback asked for a checkpoint at this step (the request is then cleared)."""
        asked, self.control.should_save = self.control.should_save, False
        return asked

    @property
    def stop_requested(self) -> bool:
        return self.control.should_training_stop

    def train_end(self) -> None:
        self._call("on_train_end")
