"""`dvpo rm`: train a reward model with the Bradley-Terry loss (the reward of the PPO baseline).

Pairs come from preference rows as given, or per prompt from rated rows (see
`dvpo.eval.rm_accuracy.pairwise_pairs`). A batch of B pairs is one forward pass over 2B rows
(the chosen halves, then the rejected), and the loss is -log sigmoid(s_chosen - s_rejected).
Held-out accuracy (`--eval-data`) always counts every pair with different scores, whatever
`--pairs` trained on, so runs stay comparable.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset

from dvpo.algos.pairwise import bradley_terry_loss
from dvpo.stage_options import RmConfig
from dvpo.data.collate import pad_sequences
from dvpo.errors import DataError
from dvpo.data.splits import split_by_prompt
from dvpo.data.tokenize import TruncationStats, ensure_pad_token
from dvpo.data.formats import load_rated_or_preference_rows, row_kind
from dvpo.eval.rm_accuracy import pairwise_pairs, response_key, rm_accuracy, unique_responses
from dvpo.models.loading import load_tokenizer, model_reference
from dvpo.models.reward_model import MODEL_SUBDIR, RewardModel, RmMeta, build_reward_model, encode_response
from dvpo.trainers.common import RowRecorder, maybe_lora, training_arguments, whole_weights
from dvpo.trainers.interrupts import StopOnSignal, raise_if_stopped
from dvpo.trainers.metrics import MetricsFileCallback
from dvpo.trainers.run_dir import CHECKPOINTS, mark_complete, start_run
from dvpo.trainers.selection import PairwiseSelection, check_validation_pairs, selection_arguments

logger = logging.getLogger(__name__)

STATS_RESPONSES = 2000  # training responses scored after training for the stored score statistics


def pair_features(triples: list[tuple], tokenizer, max_length: int, source: str = "") -> list[dict]:
    """Chosen and rejected token ids per pair; each distinct response is tokenised once and cuts are counted."""
    stats = TruncationStats()
    ids = {}
    for prompt, response in unique_responses(triples):
        ids[response_key(prompt, response)], what = encode_response(tokenizer, prompt, response, max_length)
        stats.add(what)
    stats.log(source, max_length)
    return [{"chosen_input_ids": ids[response_key(p, chosen)], "rejected_input_ids": ids[response_key(p, rejected)]}
            for p, chosen, rejected in triples]


class PairCollator:
    """Right-pads B pairs into one batch of 2B rows: rows [0, B) are chosen, rows [B, 2B) rejected."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [list(f["chosen_input_ids"]) for f in features] + [list(f["rejected_input_ids"]) for f in features]
        return {
            "input_ids": pad_sequences(ids, self.pad_token_id),
            "attention_mask": pad_sequences([[1] * len(i) for i in ids], 0),
        }


class RmTrainer(PairwiseSelection):
    """transformers.Trainer with the Bradley-Terry loss on the stacked chosen/rejected halves, selected by
    pairwise accuracy on validation rows (every pair with different scores, as `--eval-data` counts)."""

    def __init__(self, *args, validation: list[dict], meta: RmMeta, tokenizer, **kwargs):
        super().__init__(*args, **kwargs)
        self.validation, self.meta, self.score_tokenizer = validation, meta, tokenizer

    def validation_accuracy(self) -> float:
        rm = RewardModel(self.model, self.score_tokenizer, self.meta, freeze=False)
        return rm_accuracy(rm, self.validation, mode="all")["accuracy"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        chosen, rejected = logits.squeeze(-1).float().chunk(2)
        loss = bradley_terry_loss(chosen, rejected)
        return (loss, logits) if return_outputs else loss


def score_statistics(rm: RewardModel, triples: list[tuple]) -> tuple[float, float]:
    """Mean and std of the model's raw scores over (an even sample of) the distinct training responses."""
    responses = unique_responses(triples)
    sample = responses[:: max(1, len(responses) // STATS_RESPONSES)][:STATS_RESPONSES]
    scores = rm.score([p for p, _ in sample], [r for _, r in sample]).double()
    return float(scores.mean()), float(scores.std(unbiased=False))


def load_pairs(source: str, split: str, mode: str, validation_fraction: float = 0.0, seed: int = 0):
    """Training rows, their pairs and the validation rows, with the counts logged; no pairs at all is an error."""
    rows = load_rated_or_preference_rows(source, split)
    rows, validation = split_by_prompt(rows, validation_fraction, seed, source=source)
    check_validation_pairs(validation, source, validation_fraction)
    pairs = pairwise_pairs(rows, mode)
    kind = row_kind(rows)
    logger.info("%s: %d %s rows -> %s%s", source, len(rows), kind, pairs.describe(),
                f" (--pairs {mode})" if kind == "rated" else "")
    if not pairs.triples:
        raise DataError(source, None, None, "no pairs: every prompt's responses have equal scores or stand alone")
    return rows, pairs, validation


def run_rm(cfg: RmConfig, callbacks=()) -> Path:
    """The whole stage; `callbacks` are transformers `TrainerCallback`s, added to the stage's own."""
    folder, resume_from = start_run(cfg)
    tokenizer = ensure_pad_token(load_tokenizer(cfg.model))
    rows, pairs, validation = load_pairs(cfg.data, cfg.split, cfg.pairs, cfg.validation_fraction, cfg.seed)
    # Bad eval data fails now, before training.
    eval_rows = load_rated_or_preference_rows(cfg.eval_data, cfg.split) if cfg.eval_data else None
    features = pair_features(pairs.triples, tokenizer, cfg.max_length, source=cfg.data)
    model = maybe_lora(build_reward_model(cfg.model, cfg.dtype), cfg, task_type="SEQ_CLS")
    recorder = RowRecorder(folder, PairCollator(tokenizer.pad_token_id))
    meta = RmMeta(base_model=model_reference(cfg.model), lora=cfg.lora_r > 0, max_length=cfg.max_length)
    trainer = RmTrainer(
        model=model,
        args=training_arguments(cfg, folder, scheduler="linear", **selection_arguments(cfg, bool(validation))),
        train_dataset=Dataset.from_list([{**f, "row": i} for i, f in enumerate(features)]),
        eval_dataset=validation or None,
        data_collator=recorder,
        callbacks=[StopOnSignal(), MetricsFileCallback(folder, plot_keys=("loss", "eval_accuracy", "learning_rate",
                                                                         "grad_norm")), recorder, *callbacks],
        validation=validation, meta=meta, tokenizer=tokenizer,
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    raise_if_stopped(trainer.state, folder / CHECKPOINTS)
    rm = RewardModel(trainer.model, tokenizer, meta)  # scored on every process (ZeRO-3 runs forwards together)
    meta.score_mean, meta.score_std = score_statistics(rm, pairs.triples)
    meta.validation_accuracy = trainer.state.best_metric if validation else None
    held_out = {}
    if eval_rows is not None:
        accuracy = rm_accuracy(rm, eval_rows, mode="all")
        logger.info("held-out pairwise accuracy on %s: %.1f%% of %d pairs", cfg.eval_data,
                    100 * accuracy["accuracy"], accuracy["pairs"])
        held_out = {"eval_pairs": accuracy["pairs"], "eval_accuracy": accuracy["accuracy"]}
    if validation:
        held_out.update(validation_rows=len(validation), validation_accuracy=trainer.state.best_metric,
                        selected_checkpoint=trainer.state.best_model_checkpoint)
    with whole_weights(trainer.model):
        if trainer.is_world_process_zero():
            model_dir = folder / MODEL_SUBDIR
            trainer.model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
    if trainer.is_world_process_zero():
        meta.save(folder)
        mark_complete(folder, stage="rm", rows=len(rows), data_kind=row_kind(rows), pairs=len(pairs.triples),
                      skipped_equal_scores=pairs.tied, single_response_prompts=pairs.single,
                      train_loss=result.training_loss, steps=result.global_step,
                      score_mean=meta.score_mean, score_std=meta.score_std, **held_out)
    return folder
