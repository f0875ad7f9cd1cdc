"""`dvpo dpo`: Direct Preference Optimisation on TRL's DPOTrainer, the offline baseline of the paper.

Pairs come from preference rows as given or from rated rows (best vs worst per prompt by
default), through the same pair builder as the reward model, and reach TRL in its
conversational format so the model's chat template joins prompt and response.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from dvpo.stage_options import DpoConfig
from dvpo.errors import DataError
from dvpo.data.tokenize import ensure_pad_token
from dvpo.data.formats import load_rated_or_preference_rows
from dvpo.eval.rm_accuracy import pairwise_pairs
from dvpo.models.loading import load_causal_lm, load_tokenizer
from dvpo.trainers.common import maybe_lora, training_arguments, whole_weights
from dvpo.trainers.interrupts import StopOnSignal, raise_if_stopped
from dvpo.trainers.metrics import MetricsFileCallback
from dvpo.trainers.run_dir import CHECKPOINTS, mark_complete, start_run

logger = logging.getLogger(__name__)


def _messages(value, role: str) -> list[dict]:
    return list(value) if isinstance(value, list) else [{"role": role, "content": value}]


def preference_dataset(source: str, split: str, mode: str) -> Dataset:
    pairs = pairwise_pairs(load_rated_or_preference_rows(source, split), mode)
    logger.info("dpo pairs from %s: %s", source, pairs.describe())
    if not pairs.triples:
        raise DataError(source, None, None, "no preference pairs (every prompt's responses tie or stand alone)")
    return Dataset.from_list([{"prompt": _messages(p, "user"), "chosen": _messages(c, "assistant"),
                               "rejected": _messages(r, "assistant")} for p, c, r in pairs.triples])


def report_dropped_pairs(cfg: DpoConfig, built: int, kept: int) -> None:
    """TRL's DPOTrainer drops pairs whose prompt alone fills max_length (its completions would be cut away
    entirely); say how many, and stop when that is every pair."""
    message = (f"{built - kept} of {built} preference pairs from {cfg.data} have a prompt of --max-length "
               f"{cfg.max_length} tokens or more (after the chat template)")
    if kept == 0:
        raise DataError(cfg.data, None, "prompt", f"{message}: no pair is left to train on; raise --max-length")
    logger.warning("%s; TRL drops them and trains on the other %d", message, kept)


def run_dpo(cfg: DpoConfig, callbacks=()) -> Path:
    """The whole stage; `callbacks` are transformers `TrainerCallback`s, added to the stage's own."""
    folder, resume_from = start_run(cfg)
    tokenizer = ensure_pad_token(load_tokenizer(cfg.model))
    dataset = preference_dataset(cfg.data, cfg.split, cfg.pairs)
    base = training_arguments(cfg, folder, scheduler="linear")
    args = DPOConfig(**{**base.to_dict(), "beta": cfg.beta, "max_length": cfg.max_length})
    trainer = DPOTrainer(model=maybe_lora(load_causal_lm(cfg.model, cfg.dtype), cfg, task_type="CAUSAL_LM"),
                         args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[StopOnSignal(), MetricsFileCallback(folder, plot_keys=("loss", "rewards/accuracies",
                                                                           "rewards/margins")), *callbacks])
    kept = len(trainer.train_dataset)
    if kept < len(dataset):
        report_dropped_pairs(cfg, len(dataset), kept)
    result = trainer.train(resume_from_checkpoint=resume_from)
    raise_if_stopped(trainer.state, folder / CHECKPOINTS)
    if cfg.lora_r > 0:
        with whole_weights(trainer.model):
            if trainer.is_world_process_zero():
                trainer.model.merge_and_unload().save_pretrained(folder)
    else:
        trainer.save_model(str(folder))  # every process: gathers ZeRO-3 shards; the main one writes
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(folder)
        mark_complete(folder, stage="dpo", pairs=kept, pairs_dropped=len(dataset) - kept,
                      train_loss=result.training_loss, steps=result.global_step)
    return folder
