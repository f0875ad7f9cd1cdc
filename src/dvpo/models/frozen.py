"""What the frozen scorers (the GVM and the reward model) share: their metadata file and wrapper."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import torch

from dvpo.data.collate import pad_sequences
from dvpo.data.tokenize import truncate


class StageMeta:
    """Mixin for a dataclass saved as `FILE` beside a trained model: the options it needs to be used as trained.

    A local base model (`base_model`, an absolute path) is also recorded relative to the folder, and used when
    the absolute path is gone: a run tree copied or moved whole (SFT beside its GVM) still loads."""

    FILE: ClassVar[str]

    def save(self, folder: Path) -> None:
        record = asdict(self)
        base = record.get("base_model")
        if base and Path(base).is_absolute() and Path(base).exists():
            record["base_model_relative"] = os.path.relpath(base, Path(folder).resolve())
        (Path(folder) / self.FILE).write_text(json.dumps(record, indent=2))

    @classmethod
    def load(cls, folder: Path):
        record = json.loads((Path(folder) / cls.FILE).read_text())
        relative, base = record.pop("base_model_relative", None), record.get("base_model")
        if relative and base and Path(base).is_absolute() and not Path(base).exists() \
                and (Path(folder) / relative).exists():
            record["base_model"] = str((Path(folder) / relative).resolve())
        return cls(**record)


class FrozenScorer:
    """A loaded model in eval mode with gradients off, its tokenizer and its metadata."""

    def __init__(self, model, tokenizer, meta, freeze: bool = True, scope=contextlib.nullcontext):
        # freeze=False: score a model that is still training (validation), leaving its gradients on
        self.model = model.eval().requires_grad_(False) if freeze else model
        self.tokenizer = tokenizer
        self.meta = meta
        self.scope = scope  # entered around every forward (`active_adapter` when a decoder is shared)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fit(self, ids: list[int], response_mask: list[int]) -> tuple[list[int], list[int], str]:
        """One row cut to the scorer's `max_length` by the rule it was trained with (`truncate`)."""
        return truncate(ids, response_mask, self.meta.max_length)

    def padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows of this scorer's tokenizer as (input_ids, attention_mask) on its device, right-padded with
        its own pad id: the one place a scorer's inputs are batched (rows of another tokenizer are re-encoded
        first, see `dvpo.models.tokenizer_match`)."""
        return (pad_sequences(rows, self.tokenizer.pad_token_id).to(self.device),
                pad_sequences([[1] * len(row) for row in rows], 0).to(self.device))


@contextlib.contextmanager
def active_adapter(decoder, name: str, restore: str):
    """Run the LoRA layers of `decoder` with adapter `name` alone (frozen), then `restore` (trainable again): a
    LoRA policy's adapter and the GVM's share one decoder's layers, and each forward needs its own active."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in decoder.modules() if isinstance(module, BaseTunerLayer)]
    for layer in layers:
        layer.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        for layer in layers:
            layer.set_adapter(restore)


class AdapterOff:
    """A model called with LoRA adapters switched off: the frozen reference without a second copy in memory
    (the LoRA policy's own adapters, or those of a GVM sharing the reference's decoder)."""

    def __init__(self, model, adapters=None):
        self.model, self.adapters = model, adapters if adapters is not None else model

    def __call__(self, **inputs):
        with self.adapters.disable_adapter():
            return self.model(**inputs)
