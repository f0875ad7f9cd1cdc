"""Padding collators: token lists in, batch tensors out.

Attention masks and labels come from sequence lengths and response masks, never from the pad
id, so a tokenizer whose pad token is its eos (see `ensure_pad_token`) still trains on eos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # the label value transformers' losses skip


def pad_sequences(seqs: list[list[int]], pad_value: int, side: str = "right") -> torch.LongTensor:
    """Stack `seqs` into a (batch, longest) LongTensor, padding on `side` ("right" or "left")."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        begin = 0 if side == "right" else width - len(seq)
        out[i, begin : begin + len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def _as_list(values) -> list[int]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


@dataclass
class SftCollator:
    """For `transformers.Trainer`: labels are -100 except on response tokens, so loss is on completions only.

    The dataset's `response_mask` column must reach the collator: use
    `remove_unused_columns=False` in the TrainingArguments.
    """

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [_as_list(f["input_ids"]) for f in features]
        masks = [_as_list(f["response_mask"]) for f in features]
        if any(len(i) != len(m) for i, m in zip(ids, masks)):
            raise ValueError("input_ids and response_mask differ in length")
        labels = [[t if m else IGNORE_INDEX for t, m in zip(i, ms)] for i, ms in zip(ids, masks)]
        return {
            "input_ids": pad_sequences(ids, self.pad_token_id),
            "attention_mask": pad_sequences([[1] * len(i) for i in ids], 0),
            "labels": pad_sequences(labels, IGNORE_INDEX),
        }
