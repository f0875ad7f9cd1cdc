"""`dvpo gvm`: train the global value model offline by TD on rated data (paper section 3.2).

Each rated row becomes `[tau; prompt; response]` (see `dvpo.data.tau`), its score a reward on
the last token. The loss is the squared TD error over the value slots — V(s_1) at the last
prompt token, then Q(tau, s_t, a_t) at each response token — against a stop-gradient
lambda-return target, with the paper's batch normalisation (`dvpo.algos.td.gvm_td_loss`).
tau is drawn afresh for every pass over the data, as the paper samples it. A validation split of
the training prompts picks the checkpoint (pairwise accuracy, as for the reward model).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from datasets import Dataset

from dvpo.algos.td import (gvm_td_loss, last_token_rewards, moments_std, normalize_scores, prompt_relative_scores,
                           score_normalizer, update_moments)
from dvpo.stage_options import GvmConfig
from dvpo.data.collate import pad_sequences
from dvpo.data.formats import load_scored_rows
from dvpo.data.splits import split_by_prompt
from dvpo.data.tau import conditioned_on, sample_tau_sets
from dvpo.data.tokenize import ensure_pad_token, tokenize_rows
from dvpo.eval.gvm_accuracy import aggregate, pairwise_accuracy, token_values
from dvpo.models.loading import load_tokenizer, model_reference
from dvpo.models.value_model import (MODEL_SUBDIR, GlobalValueModel, GvmMeta, build_value_model, gather_values,
                                     value_positions)
from dvpo.trainers.common import RowRecorder, maybe_lora, training_arguments, whole_weights
from dvpo.trainers.interrupts import StopOnSignal, raise_if_stopped
from dvpo.trainers.metrics import MetricsFileCallback
from dvpo.trainers.run_dir import CHECKPOINTS, mark_complete, start_run
from dvpo.trainers.selection import PairwiseSelection, check_validation_pairs, selection_arguments

logger = logging.getLogger(__name__)


def gvm_features(rows: list[dict], tokenizer, max_length: int, tau_pairs: int, seed: int,
                 source: str = "") -> list[dict]:
    """Tokenised [tau; prompt; response] rows with their value slots and raw score (tau_pairs 0: no tau)."""
    prompts = [r["prompt"] for r in rows]
    taus = (sample_tau_sets(prompts, [r.get("policy") for r in rows], seed, tau_pairs) if tau_pairs
            else [[]] * len(rows))
    joined = [{"prompt": conditioned_on(r["prompt"], [(rows[j]["prompt"], rows[j]["completion"]) for j in picks]),
               "completion": r["completion"], "score": r["score"]} for r, picks in zip(rows, taus)]
    features, _ = tokenize_rows(joined, tokenizer, max_length, source=source)
    for feature in features:
        feature["value_start"], feature["value_length"] = value_positions(feature.pop("response_mask"))
    return features


class GvmCollator:
    """Right-pads a batch; keeps each row's value slots and its (normalised) score."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [list(f["input_ids"]) for f in features]
        return {
            "input_ids": pad_sequences(ids, self.pad_token_id),
            "attention_mask": pad_sequences([[1] * len(i) for i in ids], 0),
            "value_start": torch.tensor([f["value_start"] for f in features]),
            "value_length": torch.tensor([f["value_length"] for f in features]),
            "score": torch.tensor([float(f["score"]) for f in features]),
        }


def td_loss(logits: torch.Tensor, batch: dict, gamma: float, td_lambda: float, normalization: str) -> torch.Tensor:
    """The TD loss of one collated batch (see `gvm_td_loss`)."""
    values, mask = gather_values(logits, batch["value_start"], batch["value_length"])
    rewards = last_token_rewards(batch["score"].to(values.dtype), mask)
    return gvm_td_loss(values, rewards, mask, gamma, td_lambda, normalization)


class GvmTrainer(PairwiseSelection):
    """transformers.Trainer with the TD objective, selected by pairwise accuracy on validation rows."""

    def __init__(self, *args, gamma: float, td_lambda: float, normalization: str, validation: list[dict],
                 meta: GvmMeta, tokenizer, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma, self.td_lambda, self.normalization = gamma, td_lambda, normalization
        self.validation, self.meta, self.value_tokenizer, self.seed = validation, meta, tokenizer, seed

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        loss = td_loss(logits.squeeze(-1).float(), inputs, self.gamma, self.td_lambda, self.normalization)
        return (loss, logits) if return_outputs else loss

    def validation_accuracy(self) -> float:
        gvm = GlobalValueModel(self.model, self.value_tokenizer, self.meta, freeze=False)
        values = token_values(gvm, self.validation, self.seed)
        result = pairwise_accuracy([r["prompt"] for r in self.validation], [r["score"] for r in self.validation],
                                   [aggregate(v) for v in values])
        return result["accuracy"]["mean"]


@torch.no_grad()
def value_statistics(model, features: list[dict], collator: GvmCollator, batch_size: int = 64) -> tuple[float, float]:
    """Mean and std of the trained model's raw values over the value slots of `features`."""
    model.eval()
    device = next(model.parameters()).device
    count, mean, m2 = 0, 0.0, 0.0
    for begin in range(0, len(features), batch_size):
        batch = {k: v.to(device) for k, v in collator(features[begin:begin + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        values, mask = gather_values(logits.squeeze(-1).float(), batch["value_start"], batch["value_length"])
        count, mean, m2 = update_moments(count, mean, m2, values, mask)
    return mean, moments_std(count, m2)


def normalized_scores(cfg: GvmConfig, rows: list[dict]) -> tuple[list[float], float, float]:
    """The rows' scores as the GVM learns them, and the (mean, std) that map them back."""
    raw = [r["score"] for r in rows]
    if cfg.score_normalization == "prompt":
        normalized, std = prompt_relative_scores(raw, [repr(r["prompt"]) for r in rows])
        return normalized.tolist(), 0.0, std
    mean, std = score_normalizer(raw) if cfg.score_normalization == "zscore" else (0.0, 1.0)
    return normalize_scores(raw, mean, std).tolist(), mean, std


def run_gvm(cfg: GvmConfig, callbacks=()) -> Path:
    """The whole stage; `callbacks` are transformers `TrainerCallback`s, added to the stage's own."""
    folder, resume_from = start_run(cfg)
    tokenizer = load_tokenizer(cfg.model)
    ensure_pad_token(tokenizer)
    rows, validation = split_by_prompt(load_scored_rows(cfg.data, cfg.split), cfg.validation_fraction,
                                       cfg.seed, source=cfg.data)
    check_validation_pairs(validation, cfg.data, cfg.validation_fraction)
    tau_pairs = cfg.tau_pairs if cfg.tau == "policy" else 0
    scores, score_mean, score_std = normalized_scores(cfg, rows)
    # one draw of tau per pass over the data (the paper samples tau); the Trainer runs once over all draws
    draws = max(1, math.ceil(cfg.epochs)) if tau_pairs else 1
    features = []
    for draw in range(draws):
        drawn = gvm_features(rows, tokenizer, cfg.max_length, tau_pairs, cfg.seed + draw,
                             source=cfg.data if draw == 0 else "")
        features += [{**f, "score": s, "row": i} for i, (f, s) in enumerate(zip(drawn, scores))]
    meta = GvmMeta(base_model=model_reference(cfg.model), lora=cfg.lora_r > 0, tau=bool(tau_pairs),
                   tau_pairs=max(tau_pairs, 1), gamma=cfg.gamma, td_lambda=cfg.td_lambda,
                   value_normalization=cfg.value_normalization, score_mean=score_mean, score_std=score_std,
                   max_length=cfg.max_length)
    collator = GvmCollator(tokenizer.pad_token_id)
    recorder = RowRecorder(folder, collator)
    model = maybe_lora(build_value_model(cfg.model, cfg.dtype), cfg, task_type="TOKEN_CLS")
    trainer = GvmTrainer(
        model=model,
        args=training_arguments(cfg, folder, scheduler="cosine", num_train_epochs=cfg.epochs / draws,
                                **selection_arguments(cfg, bool(validation))),
        train_dataset=Dataset.from_list(features),
        eval_dataset=validation or None,
        data_collator=recorder,
        callbacks=[StopOnSignal(), MetricsFileCallback(folder, plot_keys=("loss", "eval_accuracy", "learning_rate",
                                                                         "grad_norm")), recorder, *callbacks],
        gamma=cfg.gamma, td_lambda=cfg.td_lambda, normalization=cfg.value_normalization, validation=validation,
        meta=meta, tokenizer=tokenizer, seed=cfg.seed,
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    raise_if_stopped(trainer.state, folder / CHECKPOINTS)
    first_draw = features[: len(rows)]
    stats_rows = first_draw[:: max(1, len(first_draw) // cfg.stats_rows)][: cfg.stats_rows]
    meta.value_mean, meta.value_std = value_statistics(trainer.model, stats_rows, collator)  # every process
    meta.validation_accuracy = trainer.state.best_metric if validation else None
    with whole_weights(trainer.model):
        if trainer.is_world_process_zero():
            model_dir = folder / MODEL_SUBDIR
            trainer.model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
    if trainer.is_world_process_zero():
        meta.save(folder)
        selected = {"validation_accuracy": trainer.state.best_metric,
                    "selected_checkpoint": trainer.state.best_model_checkpoint} if validation else {}
        mark_complete(folder, stage="gvm", rows=len(rows), validation_rows=len(validation),
                      train_loss=result.training_loss, steps=result.global_step, value_mean=meta.value_mean,
                      value_std=meta.value_std, **selected)
    return folder
