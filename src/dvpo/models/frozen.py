"""What the frozen scorers (the GVM and the reward model) share: their metadata file and wrapper."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import torch


class StageMeta:
    """Mixin for a dataclass saved as `FILE` beside a trained model: the options it needs to be used as trained."""

    FILE: ClassVar[str]

    def save(self, folder: Path) -> None:
        (Path(folder) / self.FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path):
        return cls(**json.loads((Path(folder) / cls.FILE).read_text()))


class FrozenScorer:
    """A loaded model in eval mode with gradients off, its tokenizer and its metadata."""

    def __init__(self, model, tokenizer, meta, freeze: bool = True):
        # freeze=False: score a model that is still training (validation), leaving its gradients on
        self.model = model.eval().requires_grad_(False) if freeze else model
        self.tokenizer = tokenizer
        self.meta = meta

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class AdapterOff:
    """A model called with LoRA adapters switched off: the frozen reference without a second copy in memory
    (the LoRA policy's own adapters, or those of a GVM sharing the reference's decoder)."""

    def __init__(self, model, adapters=None):
        self.model, self.adapters = model, adapters if adapters is not None else model

    def __call__(self, **inputs):
        with self.adapters.disable_adapter():
            return self.model(**inputs)
