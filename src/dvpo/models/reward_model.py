"""The reward model: a causal-LM backbone with a scalar head read at the last token of each sequence.

It is `AutoModelForSequenceClassification` with one label, the standard RLHF reward model (TRL,
OpenRLHF). Transformers pools at the rightmost token that is not the pad token, so the config
must carry the tokenizer's pad id; padding on either side then gives the same score. (With the
pad = eos fallback of `ensure_pad_token` that is the last token before the closing eos, the same
with and without padding.)

A saved RM folder holds `model/` (full model or LoRA adapter, plus the tokenizer) and
`dvpo_rm.json` (base model, LoRA flag, max length and the statistics of its scores on training
responses, so the RL stage can normalise rewards).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from dvpo.algos.masked import standardize
from dvpo.data.tokenize import TruncationStats, encode_example, ensure_pad_token, truncate, turn_end_after_eos
from dvpo.models.frozen import FrozenScorer, StageMeta
from dvpo.models.loading import (check_model_path, default_device, load_tokenizer, loading_errors, resolve_dtype,
                                 resolve_model)

RM_META = "dvpo_rm.json"
MODEL_SUBDIR = "model"


def build_reward_model(path: str, dtype: str = "auto"):
    """A sequence-score model whose backbone comes from a causal LM folder; the head starts fresh."""
    path = resolve_model(path)
    check_model_path(path)
    tokenizer = ensure_pad_token(load_tokenizer(path))
    with loading_errors("model", path):
        config = AutoConfig.from_pretrained(path, num_labels=1)
        config.classifier_dropout = 0.0  # dropout before a scalar head only adds noise to the scores
        config.pad_token_id = tokenizer.pad_token_id  # how the model finds each row's last token
        return AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=resolve_dtype(dtype))


def encode_response(tokenizer, prompt, response, max_length: int) -> tuple[list[int], str]:
    """Token ids of prompt + response as the RM reads them, and what truncation cut ("none" if nothing)."""
    ids, mask = encode_example(tokenizer, prompt, response)
    ids, _, what = truncate(ids, mask, max_length)
    return ids, what


@dataclass
class RmMeta(StageMeta):
    """What the RL stage needs to use an RM exactly as it was trained."""

    FILE: ClassVar[str] = RM_META

    base_model: str
    lora: bool
    max_length: int
    score_mean: float = 0.0  # raw scores of the trained model on training responses
    score_std: float = 1.0
    validation_accuracy: float | None = None  # pairwise, on the validation split that picked it (None: no split)


class RewardModel(FrozenScorer):
    """A frozen reward model: one scalar score per (prompt, response)."""

    meta: RmMeta

    @functools.cached_property
    def after_eos(self) -> list[int]:
        """What its chat template renders after an assistant turn's eos (`turn_end_after_eos`)."""
        return turn_end_after_eos(self.tokenizer)

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores standardised with the training statistics, so rewards have a known scale."""
        return standardize(scores, self.meta.score_mean, self.meta.score_std)

    @torch.no_grad()
    def score_rows(self, rows: list[list[int]]) -> torch.Tensor:
        """[B] raw scores of rows already tokenised with this model's tokenizer and cut to its max_length."""
        input_ids, attention_mask = self.padded(rows)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()

    def score(self, prompts: list, responses: list, batch_size: int = 32) -> torch.Tensor:
        """[N] raw scores on the CPU, in the order given."""
        scores = []
        cut = TruncationStats()
        for begin in range(0, len(prompts), batch_size):
            encoded = [encode_response(self.tokenizer, p, r, self.meta.max_length)
                       for p, r in zip(prompts[begin:begin + batch_size], responses[begin:begin + batch_size])]
            for _, what in encoded:
                cut.add(what)
            scores.append(self.score_rows([ids for ids, _ in encoded]).cpu())
        cut.log("reward model scoring", self.meta.max_length)
        return torch.cat(scores) if scores else torch.zeros(0)


def load_reward_model(folder: str | Path, device: str | torch.device | None = None, dtype: str = "auto") -> RewardModel:
    """Load an RM saved by `dvpo rm` in one call, frozen and ready to score."""
    folder = Path(folder)
    if not (folder / RM_META).is_file():
        raise FileNotFoundError(f"{folder} is not a reward model folder (no {RM_META}); train one with `dvpo rm`")
    meta = RmMeta.load(folder)
    model_dir = folder / MODEL_SUBDIR
    if not meta.lora:
        check_model_path(str(model_dir), tokenizer=True)
    with loading_errors("reward model", str(model_dir)):
        tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(model_dir))  # saved by `dvpo rm` beside the model
        if meta.lora:
            from peft import PeftModel

            model = PeftModel.from_pretrained(build_reward_model(meta.base_model, dtype), str(model_dir))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=resolve_dtype(dtype))
    return RewardModel(model.to(device or default_device()), tokenizer, meta)
