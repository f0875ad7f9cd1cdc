"""Checkpoint selection by pairwise accuracy on a validation split, shared by `dvpo gvm` and `dvpo rm`.

Both models are judged the same way (is the better response of a pair ranked higher?) on
validation rows carved from their training data, every `--save-steps` steps and at the end; the
best checkpoint is the one written to `model/`. The test data is never looked at.
"""

from __future__ import annotations

import math

from transformers import Trainer

from dvpo.errors import DataError
from dvpo.eval.rm_accuracy import pairwise_pairs


def check_validation_pairs(validation: list[dict], source: str, fraction: float) -> None:
    """A validation split that holds no pair to rank (every prompt's responses tie or stand alone) cannot pick a
    checkpoint: say so before training, not as an error inside the Trainer's first evaluation."""
    if validation and not pairwise_pairs(validation).triples:
        raise DataError(source, None, None, f"the validation split ({len(validation)} rows, --validation-fraction "
                        f"{fraction:g}) has no pair of responses to one prompt with different scores, so "
                        "pairwise accuracy cannot pick a checkpoint: raise --validation-fraction, or set it to 0 "
                        "to keep the last checkpoint")


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
