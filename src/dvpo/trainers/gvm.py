"""`dvpo gvm`: train the global value model offline by TD on rated data (paper section 3.2).

Each rated row becomes `[tau; prompt; response]` (see `dvpo.data.tau`), its score a reward on
the last token. The loss is the squared TD error over the value slots — V(s_1) at the last
prompt token, then Q(tau, s_t, a_t) at each response token — against a stop-gradient
lambda-return target, with the paper's batch normalisation of the predicted values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset
from transformers import Trainer

from dvpo.algos.masked import masked_mean
from dvpo.algos.td import (last_token_rewards, moments_std, normalize_scores, prompt_relative_scores,
                           score_normalizer, td_lambda_targets, update_moments, value_normalization)
from dvpo.configs import GvmConfig
from dvpo.data.collate import pad_sequences
from dvpo.data.formats import load_rows
from dvpo.data.tau import conditioned_prompt, sample_tau_indices
from dvpo.data.tokenize import ensure_pad_token, tokenize_rows
from dvpo.models.loading import load_tokenizer, model_reference
from dvpo.models.value_model import MODEL_SUBDIR, GvmMeta, build_value_model, gather_values, value_positions
from dvpo.trainers.common import RowRecorder, maybe_lora, training_arguments
from dvpo.trainers.interrupts import StopOnSignal, raise_if_stopped
from dvpo.trainers.metrics import MetricsFileCallback
from dvpo.trainers.run_dir import CHECKPOINTS, mark_complete, start_run

logger = logging.getLogger(__name__)


def gvm_features(rows: list[dict], tokenizer, max_length: int, use_tau: bool, seed: int,
                 source: str = "") -> list[dict]:
    """Tokenised [tau; prompt; response] rows with their value slots and raw score."""
    prompts = [r["prompt"] for r in rows]
    taus = sample_tau_indices(prompts, [r.get("policy") for r in rows], seed) if use_tau else [None] * len(rows)
    joined = [{"prompt": conditioned_prompt(r["prompt"], *((rows[j]["prompt"], rows[j]["completion"])
                                                          if j is not None else (None, None))),
               "completion": r["completion"], "score": r["score"]} for r, j in zip(rows, taus)]
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


def td_loss(logits: torch.Tensor, batch: dict, gamma: float, td_lambda: float, batch_norm: bool) -> torch.Tensor:
    """Mean squared TD error over the value slots; the target is stop-gradient."""
    values, mask = gather_values(logits, batch["value_start"], batch["value_length"])
    if batch_norm:
        values, _, _ = value_normalization(values, mask)
    rewards = last_token_rewards(batch["score"].to(values.dtype), mask)
    targets = td_lambda_targets(values, rewards, mask, gamma, td_lambda)
    return masked_mean((values - targets) ** 2, mask)


class GvmTrainer(Trainer):
    """transformers.Trainer with the TD objective in place of a supervised loss."""

    def __init__(self, *args, gamma: float, td_lambda: float, batch_norm: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma, self.td_lambda, self.batch_norm = gamma, td_lambda, batch_norm

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        loss = td_loss(logits.squeeze(-1).float(), inputs, self.gamma, self.td_lambda, self.batch_norm)
        return (loss, logits) if return_outputs else loss


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


def run_gvm(cfg: GvmConfig) -> Path:
    folder, resume_from = start_run(cfg)
    tokenizer = load_tokenizer(cfg.model)
    ensure_pad_token(tokenizer)
    rows = load_rows(cfg.data, "rated", split=cfg.split)
    features = gvm_features(rows, tokenizer, cfg.max_length, cfg.tau == "policy", cfg.seed, source=cfg.data)
    raw_scores = [f["score"] for f in features]
    if cfg.score_normalization == "prompt":
        normalized, score_std = prompt_relative_scores(raw_scores, [repr(r["prompt"]) for r in rows])
        score_mean = 0.0
    else:
        score_mean, score_std = score_normalizer(raw_scores) if cfg.score_normalization == "zscore" else (0.0, 1.0)
        normalized = normalize_scores(raw_scores, score_mean, score_std)
    scores = normalized.tolist()
    for feature, score in zip(features, scores):
        feature["score"] = score
    collator = GvmCollator(tokenizer.pad_token_id)
    recorder = RowRecorder(folder, collator)
    model = maybe_lora(build_value_model(cfg.model, cfg.dtype), cfg, task_type="TOKEN_CLS")
    trainer = GvmTrainer(
        model=model,
        args=training_arguments(cfg, folder, scheduler="cosine"),
        train_dataset=Dataset.from_list([{**f, "row": i} for i, f in enumerate(features)]),
        data_collator=recorder,
        callbacks=[StopOnSignal(), MetricsFileCallback(folder, plot_keys=("loss", "learning_rate", "grad_norm")), recorder],
        gamma=cfg.gamma, td_lambda=cfg.td_lambda, batch_norm=cfg.value_normalization == "batch",
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    raise_if_stopped(trainer.state, folder / CHECKPOINTS)
    if trainer.is_world_process_zero():
        stats_rows = features[:: max(1, len(features) // cfg.stats_rows)][: cfg.stats_rows]
        value_mean, value_std = value_statistics(trainer.model, stats_rows, collator)
        model_dir = folder / MODEL_SUBDIR
        trainer.model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        GvmMeta(base_model=model_reference(cfg.model),
                lora=cfg.lora_r > 0, tau=cfg.tau == "policy", gamma=cfg.gamma, td_lambda=cfg.td_lambda,
                value_normalization=cfg.value_normalization, value_mean=value_mean, value_std=value_std,
                score_mean=score_mean, score_std=score_std, max_length=cfg.max_length).save(folder)
        mark_complete(folder, stage="gvm", rows=len(rows), train_loss=result.training_loss,
                      steps=result.global_step, value_mean=value_mean, value_std=value_std)
    return folder
