"""Checkpoint selection by pairwise accuracy on a validation split, shared by `dvpo gvm` and `dvpo rm`.

Both models are judged the same way (is the better response of a pair ranked higher?) on
validation rows carved from their training data, every `--save-steps` steps and at the end; the
best checkpoint is the one written to `model/`. The test data is never looked at.
"""

from __future__ import annotations

import math

from transformers import Trainer


def selection_arguments(cfg, has_validation: bool) -> dict:
    """TrainingArguments overrides: evaluate at every save and keep the best by validation accuracy."""
    if not has_validation:
        return {}
    return dict(eval_strategy="steps", eval_steps=cfg.save_steps, metric_for_best_model="accuracy",
                greater_is_better=True, load_best_model_at_end=True)


class PairwiseSelection(Trainer):
    """A Trainer whose evaluation is one number, the pairwise accuracy that a subclass's
    `validation_accuracy()` computes on its validation rows."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        accuracy = self.validation_accuracy()
        self.model.train(was_training)
        if not math.isfinite(accuracy):
            raise FloatingPointError(f"validation accuracy is {accuracy}")
        metrics = {f"{metric_key_prefix}_accuracy": accuracy}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
